"""Forecasts at irregular future times: the continuous-time head against a direct grid forecast interpolated.

Each sample is a sine with its own frequency, phase and amplitude, observed at 40 irregular times over 8 time units
(history t in [-8, 0]); the forecasts are wanted at 4 irregular times in (0, 4]. The direct head is trained on the
regular grid t = 1, 2, 3, 4 (what a grid forecaster is given) and its forecast is linearly interpolated to the wanted
times, starting from the last observation at t = 0; the continuous-time head is trained on irregular times and asked
at them. Both models share everything but the head, see the same number of target values per sample, and train on
the same fresh batches for the same number of steps.

The margin was written down before the first run and has not changed: on held-out samples, the continuous-time
head's MSE at the irregular times must be below 0.6 x the interpolated direct forecast's MSE there. The first run
failed it (continuous 0.23 against interpolated direct 0.13, both heads after 500 steps): one closed-form step moves
each state unit monotonically in the elapsed time, which a readout of the state alone turns into a turning curve
only slowly. The head's readout now also reads the elapsed time (see ContinuousHead), and both heads train for
1,500 steps (continuous then 0.02 in a trial run of that head alone). The claim is tested for two seeds; it holds
for each of ten (``python benchmarks/seeds.py --claim irregular``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cfc_forecast.batch import Batch
from tests.conftest import model_for

MARGIN = 0.6  # continuous MSE < MARGIN x interpolated-direct MSE (fixed before the first run)
HISTORY, N_OBS, HORIZON, GRID = 8.0, 40, 4.0, 4
# Adam at 1.5e-3 decaying linearly to zero over 1,500 steps. At a constant 3e-3 (the first version) one seed of ten
# failed the margin (continuous 0.216 against 0.105) and another reached 0.58 of it; with the decay the worst of ten
# is 0.40 of the interpolated MSE (benchmarks/seeds.py --claim irregular)
STEPS, LR = 1500, 1.5e-3


def signals(rng: np.random.Generator, n: int):
    """(amplitude, frequency, phase) per sample, and the function giving its values at times (n, m)."""
    amp = rng.uniform(0.5, 1.5, (n, 1))
    freq = rng.uniform(1.8, 2.8, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    return lambda t: amp * np.sin(freq * t + phase)


def make_batch(rng: np.random.Generator, n: int, queries: np.ndarray | None) -> tuple[Batch, callable]:
    """n samples of history; targets at ``queries`` (n, K), or at irregular times in (0, HORIZON] when None."""
    f = signals(rng, n)
    t = -np.sort(rng.uniform(0, HISTORY, (n, N_OBS)), axis=1)[:, ::-1]  # increasing, <= 0
    t[:, -1] = 0.0  # the forecast origin is the last observation
    dt = np.diff(t, axis=1, prepend=t[:, :1] - 0.2)
    if queries is None:
        queries = np.sort(rng.uniform(0.05, HORIZON, (n, GRID)), axis=1)
    k = queries.shape[1]
    as_t = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    batch = Batch(
        x=as_t(f(t))[..., None],
        x_mask=torch.ones(n, N_OBS, 1, dtype=torch.bool),
        t=as_t(t),
        dt=as_t(dt),
        step_mask=torch.ones(n, N_OBS, dtype=torch.bool),
        query_t=as_t(queries),
        query_mask=torch.ones(n, k, dtype=torch.bool),
        series=torch.zeros(n, dtype=torch.long),
        origin=torch.zeros(n, dtype=torch.float64),
        target_loc=torch.zeros(n, 1),
        target_scale=torch.ones(n, 1),
        y=as_t(f(queries))[..., None],
        y_mask=torch.ones(n, k, 1, dtype=torch.bool),
    )
    return batch, f


class _Sizes:
    """What model_for reads from a DataModule: one input that is also the target."""

    n_inputs, n_targets, n_static, n_future, time_unit, lookback = 1, 1, 0, 0, "step", None
    target_input_index, input_names, target_names = [0], ["y"], ["y"]

    def __init__(self, horizon):
        self.horizon = horizon


def train(model, grid: bool, steps: int = STEPS, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    grid_times = np.arange(1, GRID + 1, dtype=np.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    decay = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=steps)
    model.train()
    for _ in range(steps):
        batch, _ = make_batch(rng, 64, np.tile(grid_times, (64, 1)) if grid else None)
        loss = ((model(batch)[..., 0] - batch.y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
    model.eval()


SEEDS = (0, 1)  # benchmarks/seeds.py runs ten; each seed draws the initial weights and the training batches


def compare_heads(seed: int) -> dict[str, float]:
    """Train both heads from the same initial weights on the same number of fresh batches; held-out MSEs.

    Returns ``continuous`` (the continuous-time head at the irregular times), ``interpolated`` (the direct head's
    grid forecast interpolated there) and ``grid`` (the direct head on its own grid).
    """
    kwargs = dict(hidden_size=32, backbone_units=64, head_hidden_sizes=[64], query_cell_units=32, append_mask=False)
    torch.manual_seed(seed)
    direct = model_for(_Sizes(GRID), head="direct", **kwargs)
    torch.manual_seed(seed)
    continuous = model_for(_Sizes(None), head="continuous", **kwargs)
    train(direct, grid=True, seed=seed)
    train(continuous, grid=False, seed=seed)

    rng = np.random.default_rng(12345)  # held-out samples at irregular times, the same for every seed
    batch, f = make_batch(rng, 512, None)
    grid_times = np.arange(1, GRID + 1, dtype=np.float64)
    with torch.no_grad():
        cont = continuous(batch)[..., 0, 0].numpy()
        grid_batch = Batch(**{**batch.__dict__, "query_t": torch.tensor(np.tile(grid_times, (512, 1))).float()})
        on_grid = direct(grid_batch)[..., 0, 0].numpy().astype(np.float64)
    last = batch.x[:, -1, 0].numpy().astype(np.float64)  # the observation at t = 0 starts the interpolation
    knots_t, queries = np.concatenate([[0.0], grid_times]), batch.query_t.numpy().astype(np.float64)
    interpolated = np.stack(
        [np.interp(queries[i], knots_t, np.concatenate([[last[i]], on_grid[i]])) for i in range(len(last))]
    )
    truth = batch.y[..., 0].numpy()
    return {
        "continuous": float(np.mean((cont - truth) ** 2)),
        "interpolated": float(np.mean((interpolated - truth) ** 2)),
        "grid": float(np.mean((on_grid - f(np.tile(grid_times, (512, 1)))) ** 2)),
    }


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_continuous_head_beats_the_interpolated_grid_forecast_at_irregular_times(seed):
    mse = compare_heads(seed)
    print(mse)
    # the direct head did learn its grid: far better there than the signal's variance (amp^2 / 2 ~ 0.54)
    assert mse["grid"] < 0.25
    assert mse["continuous"] < MARGIN * mse["interpolated"]
