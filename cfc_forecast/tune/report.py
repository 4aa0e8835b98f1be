"""What a study leaves in its directory: the trials table (printed and ``trials.csv``), the best trial's complete fit
config (``best_config.yaml``, which ``cfc-forecast fit --config`` takes as is), and plots (PNG, optuna's matplotlib
backend): optimisation history, learning curves of every trial, parameter importances."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

CALLBACK = "cfc_forecast.tune.pruning.TrialPruning"
COLUMNS = ("number", "state", "value", "validations", "duration_s")
NOTE_WIDTH = 60  # the printed table cuts notes (failure reasons) here; trials.csv has them whole


def trial_rows(study: optuna.Study, keys: list[str]) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, validations, duration, the fit value of every key, worker, note."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        values = t.user_attrs.get("fit_values", {})
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.state == TrialState.COMPLETE else None,
            "validations": len(t.intermediate_values) or None,
            "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
        }
        row.update({k: values.get(k) for k in keys})
        retried = t.system_attrs.get("failed_trial")
        note = t.user_attrs.get("failure") or (f"retry of trial {retried}" if retried is not None else "")
        if t.state == TrialState.FAIL and not note:
            note = "interrupted or abandoned by its worker (not counted; run again)"
        row.update(worker=t.user_attrs.get("worker", ""), run_dir=t.user_attrs.get("run_dir", ""), note=note)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """The trials as a fixed-width table (number, state, value, validations, duration, the tuned keys, a short note)."""
    header = [*COLUMNS, *keys, "note"]
    cells = [[_cell(row.get(h))[:NOTE_WIDTH] for h in header] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(line.rstrip() for line in lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``rows`` as CSV (lists as JSON), written atomically."""
    if not rows:
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()})
    atomic_write(path, out.getvalue())


def best_config(study: optuna.Study, restore: dict[str, Any]) -> tuple[FrozenTrial, str] | None:
    """The best complete trial and its full fit config as YAML; None while no trial has completed.

    The trial's resolved config without what the tuner added: the pruning callback, the trial's run directory;
    ``restore`` puts back the base config's values of the keys the tuner overrode (``test_after_fit``,
    ``trainer.enable_progress_bar``).
    """
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "fit_config" in t.user_attrs]
    if not done:
        return None
    best = min(done, key=lambda t: _signed(study, t))
    config = yaml.safe_load(best.user_attrs["fit_config"])
    trainer = config.get("trainer") or {}
    ours = [c for c in trainer.get("callbacks") or [] if isinstance(c, dict) and c.get("class_path") == CALLBACK]
    callbacks = [c for c in trainer.get("callbacks") or [] if c not in ours]
    trainer["callbacks"] = callbacks or None
    config["run_dir"] = None
    for key, value in restore.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    metric = study.user_attrs.get("metric", "value")
    n = len(best.intermediate_values)
    head = (f"# Best trial {best.number} of study {study.study_name!r}: {metric} = {best.value:.6g} (its best.ckpt; "
            f"{n} validations).\n# Refit: cfc-forecast fit --config <this file>\n")  # fmt: skip
    return best, head + yaml.safe_dump(config, sort_keys=False)


def _signed(study: optuna.Study, trial: FrozenTrial) -> float:
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return -trial.value if maximize else trial.value


def write_plots(study: optuna.Study, directory: Path) -> tuple[list[str], list[str]]:
    """Save ``history.png``, ``intermediate.png`` and ``importance.png``; return the files drawn and notes (a plot
    skipped and why, optuna's cautions)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from optuna.visualization import matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return [], ["no plots: no trial has completed yet"]
    plots = {"history.png": vis.plot_optimization_history, "intermediate.png": vis.plot_intermediate_values}
    drawn, notes = [], []
    if len(complete) >= 2:
        plots["importance.png"] = vis.plot_param_importances
    else:
        notes.append(f"importance.png: parameter importances need 2 complete trials, the study has {len(complete)}")
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings(record=True) as caught:  # optuna's cautions become notes on the plot
                warnings.simplefilter("always")
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the matplotlib backend
                ax = plot(study)
            notes += [f"{name}: {w.message}" for w in caught]
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            _atomic_savefig(fig, directory / name)
            plt.close(fig)
            drawn.append(name)
        except Exception as err:  # a plot is a convenience: a study that cannot draw one still reports its trials
            notes.append(f"{name}: not drawn ({type(err).__name__}: {err})")
    return drawn, notes


def progress_line(trial: FrozenTrial, best: FrozenTrial | None, left: int | None, eta_s: float | None) -> str:
    """One line for a finished trial: its outcome, the best so far, the trials left and the time they need."""
    if trial.state == TrialState.COMPLETE:
        outcome = f"value {trial.value:.6g}"
    elif trial.state == TrialState.PRUNED:
        outcome = f"pruned after {len(trial.intermediate_values)} validation(s)"
    else:
        outcome = f"failed: {trial.user_attrs.get('failure', 'interrupted')}"
    secs = trial.duration.total_seconds() if trial.duration else math.nan
    line = f"trial {trial.number:>4} {trial.state.name:<8} {outcome} ({secs:.0f} s)"
    line += f" | best {best.value:.6g} (trial {best.number})" if best is not None else " | best -"
    if left is not None:
        line += f" | {left} left"
    if eta_s is not None:
        line += f" | ETA {_duration(eta_s)}"
    return line


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (a crash leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_savefig(fig: Any, path: Path) -> None:
    tmp = _temporary(path)
    fig.savefig(tmp, dpi=100, format=path.suffix.lstrip("."))
    os.replace(tmp, path)


def _temporary(path: Path) -> Path:
    # one name per process and thread (workers write results as their trials end); created with the umask's modes
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
