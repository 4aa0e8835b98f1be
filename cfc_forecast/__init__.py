"""cfc-forecast: forecasting irregularly sampled multivariate time series with closed-form continuous-time networks."""

from cfc_forecast.cell import CfCCell
from cfc_forecast.encoder import CfCEncoder
from cfc_forecast.memory import LSTMMemoryCell
from cfc_forecast.native import native_available
from cfc_forecast.wired import WiredCfCEncoder

__version__ = "0.1.0"
__all__ = ["CfCCell", "CfCEncoder", "LSTMMemoryCell", "WiredCfCEncoder", "native_available", "__version__"]
