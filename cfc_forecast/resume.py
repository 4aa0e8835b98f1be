"""Resuming a fit: finding the run, which values may change, and applying the ones that do.

```
cfc-forecast fit --resume runs/<run> [--trainer.max_epochs 20] [--model.lr 3e-4]
cfc-forecast fit --config my.yaml --ckpt_path last      # the newest run of my.yaml under --runs_root
```
``--resume RUN`` is ``--config RUN/config.yaml --ckpt_path RUN/checkpoints/last.ckpt --run_dir RUN`` with the other
values given after it (they win over the run's config). Values a checkpoint holds may change on resume only where
they change the optimisation (:data:`OPTIMISATION`): they are applied and recorded in ``run.json``; any other
(architecture) value that differs from the checkpoint's is refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from cfc_forecast.errors import UserError

# values a resumed fit may change: they act on the loss and the updates, not on the weights' shapes
OPTIMISATION = ("lr", "weight_decay", "loss", "huber_delta", "loss_reduction", "backbone_dropout", "head_dropout",
                "impl")  # fmt: skip
# the optimizer's and the schedule's state in the checkpoint belongs to the choice it was saved with
OPTIMIZER_STATE = ("optimizer", "scheduler")


def resume_argv(argv: list[str]) -> list[str]:
    """``fit --resume RUN ...`` as the command line it stands for (unchanged without ``--resume``).

    Raises:
        UserError: ``--resume`` outside fit, or a folder without ``config.yaml`` or ``checkpoints/last.ckpt``.
    """
    found = _resume_option(argv)
    if found is None:
        return argv
    run, rest = found
    if argv[:1] != ["fit"]:
        raise UserError("--resume continues a fit: cfc-forecast fit --resume runs/<run>")
    folder = Path(run)
    config, last = folder / "config.yaml", folder / "checkpoints" / "last.ckpt"
    for path in (config, last):
        if not path.is_file():
            raise UserError(f"--resume {run!r}: {path} does not exist; give a run folder written by cfc-forecast fit")
    return ["fit", "--config", str(config), *rest, f"--ckpt_path={last}", f"--run_dir={folder}"]


def resume_target(argv: list[str]) -> str | None:
    """The run folder a command line's ``--resume`` names (None without one), as the user wrote it."""
    found = _resume_option(argv)
    return None if found is None else found[0]


def _resume_option(argv: list[str]) -> tuple[str, list[str]] | None:
    """``--resume``'s folder and the arguments after the subcommand without it; None without ``--resume``."""
    for i, arg in enumerate(argv):
        if arg == "--resume" or arg.startswith("--resume="):
            run = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            return run, argv[1:i] + argv[i + (1 if "=" in arg else 2) :]
    return None


def resolve_last(cfg: Any, subcommand: str) -> tuple[str, Path]:
    """``--ckpt_path last``: ``<run_dir>/checkpoints/last.ckpt``, else the newest such file among the runs under
    ``--runs_root`` made from the same ``--config`` files.

    Raises:
        UserError: no such checkpoint.
    """
    if cfg.get("run_dir"):
        last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise UserError(f"--ckpt_path last: {last} does not exist; give --ckpt_path explicitly")
        return str(last), Path(cfg.run_dir)
    configs = config_files(cfg)
    candidates = []
    for run_json in Path(cfg.runs_root).glob("*/run.json"):
        last = run_json.parent / "checkpoints" / "last.ckpt"
        try:
            history = json.loads(run_json.read_text()).get("history", [])
        except (OSError, ValueError):
            continue
        if last.is_file() and any(h.get("config_files") == configs for h in history):
            candidates.append((last.stat().st_mtime, last))
    if not candidates:
        raise UserError(
            f"--ckpt_path last: no run under {cfg.runs_root!r} made from --config {configs} has a last.ckpt; "
            "give --resume runs/<run> or --ckpt_path runs/<run>/checkpoints/last.ckpt"
        )
    last = max(candidates)[1]
    return str(last), last.parent.parent


def config_files(cfg: Any) -> list[str]:
    """The ``--config`` files of a parsed command, as absolute paths."""
    return [str(Path(str(c)).resolve()) for c in (cfg.get("config") or [])]


def review_changes(
    ckpt: dict[str, Any], saved: dict[str, Any], cfg: Any, subcommand: str, given: str | None = None
) -> dict[str, Any]:
    """Compare the model values about to be used with the checkpoint's; ``given``: how the user named the
    checkpoint, for messages (``--resume runs/<run>``; default ``--ckpt_path <path>``).

    Returns:
        For ``run.json``: ``resumed_from`` (path, epoch, step; fit only), ``changed`` ({name: [old, new]}: the
        model values that differ from the checkpoint's, and the ``trainer.<name>`` values that differ from its
        run's config, :func:`trainer_changes`; fit only) and ``config_files``.

    Raises:
        UserError: a value the weights or the optimizer state depend on differs, naming each.
    """
    model = cfg.get("model") or {}
    differ = {k: (v, model.get(k)) for k, v in saved.items() if k in model and model.get(k) != v}
    fixed = {k: d for k, d in differ.items() if k not in OPTIMISATION}
    if "pinball" in differ.get("loss", ()):  # to or from pinball changes the number of outputs per step
        fixed["loss"] = differ["loss"]
    if subcommand == "fit" and "lr" in differ and model.get("scheduler") == "onecycle":
        fixed["lr"] = differ["lr"]  # the one-cycle schedule is built from the first lr over the whole fit
    if subcommand == "fit":
        fixed.update({k: d for k, d in differ.items() if k in OPTIMIZER_STATE})
    if fixed:
        listed = ", ".join(f"{k} (checkpoint {a!r}, given {b!r})" for k, (a, b) in fixed.items())
        given = given or f"--ckpt_path {cfg.ckpt_path}"
        raise UserError(
            f"{given}: these values differ from the checkpoint's and its weights or optimizer "
            f"state depend on them: {listed}; drop them to use the checkpoint's, or start a new fit"
        )
    event: dict[str, Any] = {"config_files": config_files(cfg)}
    if subcommand == "fit":
        step = ckpt.get("global_step")
        event["resumed_from"] = {"path": str(cfg.ckpt_path), "epoch": ckpt.get("epoch"), "step": step}
        event["changed"] = {k: list(d) for k, d in differ.items()} | trainer_changes(cfg)
    return event


def trainer_changes(cfg: Any) -> dict[str, list[Any]]:
    """The ``--trainer`` values (single values: numbers, text, flags) of a resumed fit that differ from those of the
    run that wrote its checkpoint (its ``config.yaml``, beside ``checkpoints/``), as ``{"trainer.<name>": [old,
    new]}``; none when that file is absent or unreadable (a checkpoint from elsewhere)."""
    import yaml

    saved = Path(str(cfg.ckpt_path)).parent.parent / "config.yaml"
    try:
        old = (yaml.safe_load(saved.read_text()) or {}).get("trainer") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    new = cfg.get("trainer") or {}
    new = new.as_dict() if hasattr(new, "as_dict") else dict(new)
    single = (int, float, str, bool, type(None))
    return {f"trainer.{k}": [old[k], v] for k, v in new.items()
            if k in old and isinstance(v, single) and isinstance(old[k], single) and old[k] != v}  # fmt: skip


class ApplyChanges(Callback):
    """Sets a changed ``lr`` / ``weight_decay`` on the optimizer once its state is restored from the checkpoint
    (the restored state would otherwise bring the old values back); the other changed values act through the
    model's hyperparameters."""

    def __init__(self, changed: dict[str, list[Any]]) -> None:
        self.changed = {k: v[1] for k, v in changed.items() if k in ("lr", "weight_decay")}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self.changed:
            return
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group.update(self.changed)
                if "lr" in self.changed and "initial_lr" in group:
                    group["initial_lr"] = self.changed["lr"]
        for config in trainer.lr_scheduler_configs:
            if "lr" in self.changed and hasattr(config.scheduler, "base_lrs"):
                config.scheduler.base_lrs = [self.changed["lr"]] * len(config.scheduler.base_lrs)
