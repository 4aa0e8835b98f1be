"""The MLflow pyfunc model of ``cfc-forecast export --format mlflow`` (models-from-code: MLflow runs this file when
it loads the model; nothing is cloudpickled).

``load_context`` reads the checkpoint artefact with ``weights_only=True`` (``Scorer``) and forecasts the input
example once, so the native loop is built or loaded and every layer touched before the first request. ``predict``
takes a pandas or polars frame of series rows in the training layout (``params``: ``origins``, ``query_times``,
``min_rows``, as ``cfc-forecast predict`` takes them) and returns the long forecast frame (pandas) through the same
function as the batch job; input the job refuses raises an ``MlflowException`` with the job's message (HTTP 400
from ``mlflow models serve``).
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel


def _number_or_text(values: Any) -> list[str | float] | None:
    """Params arrive as text (JSON strings) or numbers: "12.5" means the number 12.5, "6h" stays text."""
    if values is None or len(values) == 0:  # the signature's default: none given
        return None
    out: list[str | float] = []
    for v in list(values):
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(str(v))
    return out


class CfCForecastModel(PythonModel):
    """A cfc-forecast checkpoint as an MLflow pyfunc model (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        import polars as pl
        import torch

        from cfc_forecast.forecast.scorer import Scorer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.scorer = Scorer(context.artifacts["checkpoint"], device=device)
        self.scorer.warm_up(pl.read_parquet(context.artifacts["input_example"]))

    # no type hint on model_input: MLflow would read one as a signature; the model's signature is given at export
    def predict(self, context, model_input, params=None):
        from cfc_forecast.forecast.scorer import as_polars
        from cfc_forecast.forecast.trained import JobError

        params = params or {}
        try:
            result = self.scorer.report(
                as_polars(model_input),
                origins=_number_or_text(params.get("origins")),
                query_times=_number_or_text(params.get("query_times")),
                min_rows=params.get("min_rows"),
                source="request",
            )
        except (JobError, ValueError) as err:  # the job's one-line message; HTTP 400 when served
            raise MlflowException(" ".join(str(err).split()), error_code=INVALID_PARAMETER_VALUE) from None
        return result.frame.to_pandas()


mlflow.models.set_model(CfCForecastModel())
