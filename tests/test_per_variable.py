"""``model.encoding='per_variable'``: each variable on its own clock, mixing between variables, the heads per target."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from cfc_forecast.commands import main
from cfc_forecast.errors import UserError
from cfc_forecast.forecaster.variables import PerVariable, QueryMixing, buckets, pack
from datamodules import SeriesDataModule
from tests.conftest import model_for
from tests.test_cli import TINY_DATA, TINY_MODEL


def _batch(dm, n=8):
    ds = dm.dataset("val")
    return ds.collate(list(range(min(len(ds), n))))


def _model(dm, **kwargs):
    model = model_for(dm, encoding="per_variable", **kwargs)
    return model.eval()


@pytest.mark.parametrize("encoder", ["cfc", "gru", "lstm"])
@pytest.mark.parametrize("mixing", ["attention", "none"])
def test_shapes_and_every_parameter_gets_a_gradient(tiny_synthetic, encoder, mixing):
    batch = _batch(tiny_synthetic)
    model = model_for(tiny_synthetic, encoding="per_variable", encoder=encoder, variable_mixing=mixing)
    pred = model(batch)  # training mode: only the observed targets are forecast
    assert pred.shape == (*batch.y.shape, 1)
    assert torch.all(pred[..., 0][~batch.y_mask] == 0)
    (pred[..., 0] - batch.y).pow(2)[batch.y_mask].mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "embedding" in n or "encoder" in n)
    # evaluation forecasts every target at every real query, the same values where training did
    model.eval()
    with torch.no_grad():
        full = model(batch)
    assert torch.allclose(full[batch.y_mask], pred.detach()[batch.y_mask], atol=1e-6)
    real = batch.query_mask[..., None].expand_as(batch.y)
    assert torch.all(full[..., 0][real & ~batch.y_mask] != 0)
    assert torch.all(full[..., 0][~real] == 0)


def test_the_direct_head_on_count_windows():
    rng = np.random.default_rng(0)
    t = np.arange(60.0)
    frame = pl.DataFrame({"id": ["s"] * 60, "t": t, "a": np.sin(t / 5), "b": rng.normal(size=60)})
    frame = frame.with_columns(pl.when(pl.col("t") % 3 == 0).then(None).otherwise(pl.col("b")).alias("b"))
    dm = SeriesDataModule.from_frame(frame, id_column="id", time_column="t", targets=["a", "b"],
                                     lookback=8, horizon=3, batch_size=8)  # fmt: skip
    dm.setup("fit")
    model = _model(dm)
    batch = _batch(dm)
    assert model.head_name == "direct"
    assert model(batch).shape == (batch.batch_size, 3, 2, 1)


def _perturb(batch, variable):
    x = batch.x.clone()
    x[..., variable] = torch.where(batch.x_mask[..., variable], x[..., variable] + 1.0, x[..., variable])
    return dataclasses.replace(batch, x=x)


def test_a_variables_state_ignores_the_other_variables_until_the_mixing(tiny_synthetic):
    batch = _batch(tiny_synthetic)
    other = _perturb(batch, 1)
    mixed = _model(tiny_synthetic)
    net = mixed.net
    for out in (net.per_variable.mix.out_proj, net.per_variable.query_mix.out):  # they start at zero: no mixing
        torch.nn.init.normal_(out.weight, std=0.3)

    def states(b):
        return net.per_variable.variable_states(b.x, b.x_mask, b.t, b.dt, b.step_mask, net.encoder, net.clock)[0]

    with torch.no_grad():
        before, after = states(batch), states(other)
        assert torch.equal(before[:, [0, 2]], after[:, [0, 2]])  # only variable 1's own state moved
        assert not torch.allclose(before[:, 1], after[:, 1])
        # with the mixing, variable 0's forecasts see variable 1; without it they do not
        assert not torch.allclose(mixed(batch)[..., 0, :], mixed(other)[..., 0, :])
        alone = _model(tiny_synthetic, variable_mixing="none")
        assert torch.equal(alone(batch)[..., 0, :], alone(other)[..., 0, :])


def test_an_all_missing_step_changes_nothing(tiny_synthetic):
    batch = _batch(tiny_synthetic)
    model = _model(tiny_synthetic)
    at = 2  # a step inside every window's history, observed by no variable
    ins = lambda v, fill: torch.cat([v[:, :at], fill, v[:, at:]], dim=1)  # noqa: E731
    b, f = batch.batch_size, batch.x.shape[2]
    # its time between the neighbours', and the step after it keeps its elapsed time from the one before
    t_new = (batch.t[:, at - 1 : at] + batch.t[:, at : at + 1]) / 2
    extra = dataclasses.replace(
        batch,
        x=ins(batch.x, torch.zeros(b, 1, f)),
        x_mask=ins(batch.x_mask, torch.zeros(b, 1, f, dtype=torch.bool)),
        t=ins(batch.t, t_new),
        dt=ins(batch.dt, t_new - batch.t[:, at - 1 : at]),
        step_mask=ins(batch.step_mask, batch.step_mask[:, at : at + 1]),
        t_abs=None,
    )
    with torch.no_grad():
        assert torch.equal(model(batch), model(extra))


def test_a_series_alone_and_inside_a_padded_batch_agree(tiny_synthetic):
    batch = _batch(tiny_synthetic)
    model = _model(tiny_synthetic)
    with torch.no_grad():
        whole = model(batch)
        for i in range(batch.batch_size):
            one = int(batch.step_mask[i].sum())  # its own length, without the batch's padding
            k = int(batch.query_mask[i].sum())
            tensors = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
            fields = {name: v[i : i + 1] for name, v in tensors.items() if isinstance(v, torch.Tensor)}
            for name in ("x", "x_mask", "t", "dt", "step_mask", "t_abs"):
                fields[name] = fields[name][:, :one]
            for name in ("query_t", "query_mask", "y", "y_mask", "query_t_abs"):
                fields[name] = fields[name][:, :k]
            alone = model(dataclasses.replace(batch, **fields))
            assert torch.allclose(alone[0], whole[i, :k], atol=1e-6, rtol=0)


def test_packing_moves_each_variables_observations_to_the_front_with_its_own_elapsed_times():
    x = torch.tensor([[[1.0, 0.0], [2.0, 5.0], [0.0, 6.0], [3.0, 0.0]]])  # (1, T=4, V=2)
    mask = x != 0
    t = torch.tensor([[-4.0, -3.0, -1.5, -0.5]])
    dt = torch.tensor([[1.0, 1.0, 1.5, 1.0]])
    packed = pack(x, mask, t, dt, torch.ones(1, 4, dtype=torch.bool))
    assert packed.counts.tolist() == [3, 2]
    assert packed.values[0, :3].tolist() == [1.0, 2.0, 3.0] and packed.values[1, :2].tolist() == [5.0, 6.0]
    # the window starts at t[0] - dt[0] = -5: variable 0 first seen 1 later, then 1 and 2.5 after its previous
    assert packed.step_dt[0, :3].tolist() == [1.0, 1.0, 2.5] and packed.step_dt[1, :2].tolist() == [2.0, 1.5]
    assert packed.t_last.tolist() == [-0.5, -1.5]


def test_buckets_pad_less_than_one_step_per_observed_value():
    counts = torch.tensor([0, 1, 2, 3, 4, 5, 9, 16, 17, 0, 40])
    groups = buckets(counts)
    assert sorted(torch.cat(groups).tolist()) == [i for i, n in enumerate(counts.tolist()) if n]
    padded = sum(len(g) * int(counts[g].max()) - int(counts[g].sum()) for g in groups)
    assert padded < int(counts.sum())
    assert all(counts[g].max() < 2 * counts[g].min() for g in groups)


def test_query_mixing_projects_as_if_every_token_were_formed():
    mix = QueryMixing(8, 2, torch.nn.Linear(1, 8))
    torch.nn.init.normal_(mix.out.weight)  # it starts at zero
    h, bi = torch.randn(3, 5, 8), torch.tensor([0, 2, 2, 1])
    stale, targets = torch.rand(4, 5), torch.tensor([[0, 3], [1, 4], [2, 2], [0, 1]])
    tokens = h[bi] + mix.staleness(stale[..., None])  # (G, V, H) every variable's token at each query
    q, k, v = mix.q(tokens.gather(1, targets[..., None].expand(-1, -1, 8))), mix.k(tokens), mix.v(tokens)
    split = lambda z: z.unflatten(-1, (2, 4)).transpose(1, 2)  # noqa: E731
    att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 2.0, dim=-1) @ split(v)
    want = h[bi].gather(1, targets[..., None].expand(-1, -1, 8)) + mix.out(att.transpose(1, 2).flatten(2))
    assert torch.allclose(mix(h, bi, stale, targets), want, atol=1e-5)


def test_bad_combinations_are_clear_errors(tiny_synthetic):
    with pytest.raises(UserError, match="per-step head"):
        model_for(tiny_synthetic, encoding="per_variable", head="step")
    with pytest.raises(UserError, match="channel_independent"):
        model_for(tiny_synthetic, encoding="per_variable", channel_independent=True)
    with pytest.raises(UserError, match="every target among the inputs"):
        model_for(tiny_synthetic, encoding="per_variable", target_inputs=[0, -1, 2])
    with pytest.raises(UserError, match="divisible"):
        model_for(tiny_synthetic, encoding="per_variable", hidden_size=10, mixing_heads=4)
    with pytest.raises(UserError, match="unknown encoding"):
        model_for(tiny_synthetic, encoding="per_channel")
    with pytest.raises(UserError, match="unknown variable_mixing"):
        PerVariable(3, 8, [0], mixing="graph")
    with pytest.raises(UserError, match="does not read categorical covariates yet"):  # never silently ignored
        model_for(tiny_synthetic, encoding="per_variable", categorical_sizes={"inputs": [5]})


def test_fit_one_epoch_then_predict_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["fit", *TINY_DATA, *TINY_MODEL, "--model.encoding=per_variable", "--model.mixing_heads=2",
            f"--run_dir={run}", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]  # fmt: skip
    assert main(args) == 0
    ckpt = run / "checkpoints" / "best.ckpt"
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["encoding"] == "per_variable"
    pred = ["predict", f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}", f"--run_dir={tmp_path / 'pred'}"]
    assert main(pred) == 0
    frame = pl.read_parquet(tmp_path / "pred" / "predictions.parquet")
    assert frame.height > 0 and frame["prediction"].is_finite().all()
    assert frame["series"].n_unique() == 8 and set(frame["variable"]) == {"x1", "x2", "v1"}


@pytest.mark.parametrize("mixing", ["attention", "none"])
def test_validation_forecasts_only_the_observed_targets_with_the_same_metrics(tiny_synthetic, mixing, monkeypatch):
    import lightning as L

    from cfc_forecast.forecaster.module import ForecastModule

    torch.manual_seed(0)
    model = model_for(tiny_synthetic, encoding="per_variable", variable_mixing=mixing, quantiles=[0.1, 0.5, 0.9],
                      loss="pinball")  # fmt: skip
    loader = tiny_synthetic.val_dataloader()

    def validate() -> dict[str, float]:
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu", devices=1)  # fmt: skip
        return trainer.validate(model, loader, verbose=False)[0]

    rows = []
    head_forward = model.net.head.forward

    def counting(*args, **kwargs):  # the head's rows: (rows, 1, ...) inputs in the per-variable encoding
        rows.append(args[0].shape[0])
        return head_forward(*args, **kwargs)

    monkeypatch.setattr(model.net.head, "forward", counting)
    observed = validate()
    observed_rows, rows[:] = sum(rows), []
    # the same module forecasting every (query, target) pair, as evaluation did before
    monkeypatch.setattr(model, "forward", lambda batch, observed_only=False: ForecastModule.forward(model, batch))
    every = validate()
    assert sum(rows) > observed_rows  # fewer head rows: the point of it
    assert observed.keys() == every.keys() and "val/loss" in observed and len(observed) > 2
    for key, value in observed.items():
        assert value == pytest.approx(every[key], rel=1e-7, abs=0.0), key
    # prediction still forecasts every target at every real query
    batch = _batch(tiny_synthetic)
    model.eval()
    with torch.no_grad():
        pred = model.predict_step(batch, 0)["prediction"]
    real = batch.query_mask[..., None].expand_as(batch.y)
    full = batch.to_original_units(ForecastModule.forward(model, batch).detach())
    assert torch.equal(pred, full)
    assert torch.all(pred[..., 1][real & ~batch.y_mask] != 0) and torch.isfinite(pred[real]).all()
