"""Built-in sources: the published counts and protocol details on the real data (../shared/data)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from datamodules import ETTDataModule, PhysioNetDataModule, SyntheticDataModule, Walker2dDataModule, naive_metrics
from tests.datamodules.conftest import real_data


def sizes(dm) -> tuple[int, int, int]:
    return tuple(len(dm.dataset(s)) for s in ("train", "val", "test"))


def test_synthetic_is_seeded_and_irregular() -> None:
    a, b = SyntheticDataModule(n_series=32), SyntheticDataModule(n_series=32)
    assert torch.equal(a.dataset("train").collate([0, 5]).x, b.dataset("train").collate([0, 5]).x)
    c = SyntheticDataModule(n_series=32, seed=1)
    assert not torch.equal(a.dataset("train").collate([0]).x_mask, c.dataset("train").collate([0]).x_mask)
    full = SyntheticDataModule()
    assert sizes(full) == (2302, 512, 507)
    assert (full.n_inputs, full.n_targets, full.horizon, full.time_unit) == (3, 3, None, "s")
    mask = full._built.tensors.mask
    assert mask.float().mean().item() == pytest.approx(0.75, abs=0.01)  # 25 % missing
    batch = full.dataset("train").collate(list(range(64)))
    steps = batch.dt[batch.step_mask][1:]
    assert steps.std() > 0.3 * steps.mean()  # irregular spacing
    assert set(full.hparams) >= {"n_series", "seed", "observe"} and "layout" not in full.hparams


def test_ett_h1_protocol() -> None:
    real_data("ETT", "ETTh1.csv")
    dm = ETTDataModule("ETTh1", lookback=96, horizon=96)
    assert sizes(dm) == (8449, 2785, 2785)
    assert sizes(ETTDataModule("ETTh1", lookback=96, horizon=720)) == (7825, 2161, 2161)
    raw = pl.read_csv(real_data("ETT", "ETTh1.csv")).drop("date").to_numpy()
    mean, std = raw[:8640].mean(axis=0), raw[:8640].std(axis=0)  # train rows, ddof 0
    test = dm.dataset("test").collate([0])
    np.testing.assert_allclose(test.target_loc[0], mean, rtol=1e-6)
    np.testing.assert_allclose(test.target_scale[0], std, rtol=1e-6)
    # the first test window reads rows [11424, 11520) and forecasts rows [11520, 11616)
    np.testing.assert_allclose(test.x[0], (raw[11424:11520] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(test.y[0], (raw[11520:11616] - mean) / std, atol=1e-5)
    last = dm.dataset("test").collate([2784])
    np.testing.assert_allclose(last.y[0, -1], (raw[14399] - mean) / std, atol=1e-5)
    assert (dm.n_inputs, dm.n_targets, dm.horizon) == (7, 7, 96)


def test_ett_m1_counts() -> None:
    real_data("ETT", "ETTm1.csv")
    assert sizes(ETTDataModule("ETTm1")) == (34369, 11425, 11425)


@pytest.fixture(scope="module")
def physionet(physionet_cache) -> PhysioNetDataModule:
    real_data("physionet2012", "set-a.tar.gz")
    return PhysioNetDataModule(cache_dir=str(physionet_cache))


def test_physionet_split_and_counts(physionet: PhysioNetDataModule) -> None:
    assert sizes(physionet) == (7200, 2400, 2400)
    assert physionet.counts["rows with an empty variable name"] == 2403  # set-c, in the original data
    assert (physionet.n_inputs, physionet.n_targets, physionet.horizon, physionet.time_unit) == (41, 41, None, "h")
    ids = np.array(physionet.series_ids)
    assert len(ids) == 12000 and (np.diff(ids) > 0).all()
    p = np.random.RandomState(42).permutation(12000)  # noqa: NPY002 - the protocol's generator
    for split, members in (("test", p[:2400]), ("train", p[2400:9600]), ("val", p[9600:])):
        assert set(physionet.dataset(split).series.tolist()) == set(members.tolist())


def test_physionet_known_record(physionet: PhysioNetDataModule) -> None:
    """Record 132539 of set-a, values read from its raw text."""
    index = physionet.series_ids.index(132539)
    split = next(s for s in ("train", "val", "test") if index in physionet.dataset(s).series.tolist())
    ds = physionet.dataset(split)
    b = ds.collate([ds.series.tolist().index(index)])
    names = physionet.input_names
    x = b.unscale(b.x)[0]  # inputs and targets are the same 41 channels
    y = b.unscale(b.y)[0]
    assert int(b.step_mask.sum()) == 26 and int(b.x_mask.sum()) == 158  # before 24:00
    assert int(b.query_mask.sum()) == 25 and int(b.y_mask.sum()) == 113  # 24:00-48:00, Urine 27:37 twice
    assert b.t[0, :2].tolist() == pytest.approx([-24.0, 7 / 60 - 24.0])
    assert b.query_t[0, 0].item() == pytest.approx(37 / 60)
    first = {n: x[0, names.index(n)].item() for n in ("Age", "Gender", "Height", "ICUType", "Weight")}
    assert first == pytest.approx({"Age": 54, "Gender": 0, "Height": -1, "ICUType": 4, "Weight": -1}, abs=1e-4)
    assert x[1, names.index("HR")].item() == pytest.approx(73, abs=1e-4)
    assert x[1, names.index("NIMAP")].item() == pytest.approx(92.33, abs=1e-3)
    at_2737 = int(((b.query_t[0] - (27 + 37 / 60 - 24)).abs() < 1e-4).nonzero())
    assert y[at_2737, names.index("Urine")].item() == pytest.approx(200.0, abs=1e-3)  # mean of 400 and 0
    assert y[at_2737, names.index("HR")].item() == pytest.approx(80.0, abs=1e-4)


def test_physionet_minmax_on_train_and_val(physionet: PhysioNetDataModule) -> None:
    b = physionet.dataset("train").collate([0])
    x = physionet._built.tensors.values.numpy()
    m = physionet._built.tensors.mask.numpy()
    series = np.repeat(np.arange(12000), np.diff(physionet._built.offsets))
    fit = np.isin(series, np.concatenate([physionet.dataset(s).series.numpy() for s in ("train", "val")]))
    hr = physionet.input_names.index("HR")
    raw_hr = x[fit & m[:, hr], hr] * b.target_scale[0, hr].item() + b.target_loc[0, hr].item()
    assert raw_hr.min() == pytest.approx(b.target_loc[0, hr].item(), abs=1e-3)
    assert x[fit & m[:, hr], hr].min() == pytest.approx(0.0, abs=1e-6)
    assert x[fit & m[:, hr], hr].max() == pytest.approx(1.0, abs=1e-6)


def test_walker2d_protocol() -> None:
    real_data("walker2d", "walker.tar.gz")
    dm = Walker2dDataModule()
    assert {k: len(v) for k, v in dm.split_files.items()} == {"train": 300, "val": 40, "test": 60}
    assert sizes(dm) == (9684, 1272, 1937)
    b = dm.dataset("test").collate([0, 1])
    assert b.x.shape == (2, 64, 17) and b.y_step.shape == (2, 64, 17) and b.query_t.shape == (2, 0)
    assert set(b.dt.unique().tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0}
    assert round(naive_metrics(dm, "test")["mse"], 2) == 4.54  # "next state = current state", data/README.md
