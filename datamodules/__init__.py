"""Lightning DataModules: irregular multivariate series into time-stamped ``cfc_forecast.Batch``es."""

from datamodules.base import SeriesDataModule
from datamodules.baselines import linear_metrics, naive_metrics
from datamodules.ett import ETTDataModule
from datamodules.physionet import PhysioNetDataModule
from datamodules.synthetic import SyntheticDataModule
from datamodules.walker2d import Walker2dDataModule

__all__ = [
    "ETTDataModule",
    "PhysioNetDataModule",
    "SeriesDataModule",
    "SyntheticDataModule",
    "Walker2dDataModule",
    "linear_metrics",
    "naive_metrics",
]
