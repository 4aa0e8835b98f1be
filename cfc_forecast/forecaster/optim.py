"""Optimizers and learning-rate schedules chosen by name, so a YAML file (and a tuner) picks them by plain values."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from cfc_forecast.errors import UserError

OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "cosine", "plateau", "onecycle"]
_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = ("none", "cosine", "plateau", "onecycle")


def configure(
    module: nn.Module,
    optimizer: OptimizerName,
    lr: float,
    weight_decay: float,
    scheduler: SchedulerName,
    total_epochs: int,
    total_steps: int,
    monitor: str = "val/loss",
) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns for these choices.

    Args:
        module: whose parameters are optimised.
        optimizer: "adam", "adamw" or "sgd" (momentum 0.9). lr: learning rate. weight_decay: L2 / decoupled decay.
        scheduler: "none"; "cosine" annealing to 0 over ``total_epochs``; "plateau" (halve the rate when
            ``monitor`` stalls for 5 epochs); "onecycle" over ``total_steps`` optimizer steps.
        total_epochs: planned epochs (cosine). total_steps: planned optimizer steps (onecycle).
        monitor: the logged value the plateau schedule watches.

    Raises:
        ValueError: unknown names.
    """
    if optimizer not in _OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}; choose one of {sorted(_OPTIMIZERS)}")
    if scheduler not in SCHEDULERS:
        raise UserError(f"unknown scheduler {scheduler!r}; choose one of {list(SCHEDULERS)}")
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    opt = _OPTIMIZERS[optimizer](module.parameters(), lr=lr, weight_decay=weight_decay, **extra)
    if scheduler == "none":
        return {"optimizer": opt}
    if scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_epochs, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
    if scheduler == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": monitor, "interval": "epoch"}}
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
