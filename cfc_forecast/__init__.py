"""cfc-forecast: forecasting irregularly sampled multivariate time series with closed-form continuous-time networks.

The public names load on first use (PEP 562), so ``cfc_forecast.launch`` (the ``cfc-forecast`` command) can set
the OpenMP environment before anything imports torch; ``import cfc_forecast`` itself sets nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_PUBLIC = {
    "Batch": "cfc_forecast.batch",
    "CfCCell": "cfc_forecast.core.cell",
    "CfCEncoder": "cfc_forecast.core.encoder",
    "LSTMMemoryCell": "cfc_forecast.core.memory",
    "native_available": "cfc_forecast.core.native",
    "WiredCfCEncoder": "cfc_forecast.core.wired",
    "ForecastModule": "cfc_forecast.forecaster.module",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cfc_forecast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
