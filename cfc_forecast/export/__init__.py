"""``cfc-forecast export``: a checkpoint as a model other systems load and serve (MLflow pyfunc).

```
cfc-forecast export --ckpt_path runs/<run>/checkpoints/best.ckpt --format mlflow --output model/
cfc-forecast export --ckpt_path ... --format mlflow --register cfc-nightly     # log to MLFLOW_TRACKING_URI, register
mlflow models serve -m model/ --env-manager local --port 5001                  # POST /invocations
```
The model folder holds the checkpoint (an artefact, loaded with ``weights_only=True``), the project's code
(``cfc_forecast`` and ``datamodules`` as code paths: the project is not on a package registry), the model code
(``pyfunc_model.py``: models-from-code, no pickled object), requirements pinned to this environment's versions, an
input example (a few series of the training data, or ``--input_example``) and a signature (the training layout's
columns, each optional so that a missing one reaches the job's own message; params ``origins``, ``query_times``,
``min_rows``). Exit status: 0 written, 2 a user error (one line).
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import polars as pl
import yaml
from jsonargparse import auto_cli

from cfc_forecast.errors import UserError, report
from cfc_forecast.forecast.trained import JobError, Trained

PACKAGE = Path(__file__).resolve().parents[1]  # cfc_forecast/
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
EXAMPLE_SERIES = 2


def pinned_requirements() -> list[str]:
    """The project's dependencies pinned to the versions installed here (pandas too: MLflow hands it frames)."""
    names = ["pandas"]
    for req in metadata.requires("cfc-forecast") or []:
        if "extra ==" not in req:
            names.append(re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0])
    pins = []
    for name in dict.fromkeys(names):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def example_rows(ckpt_path: str, trained: Trained, input_example: str | None) -> pl.DataFrame:
    """A few whole series in the training layout: from ``input_example``, else from the data path of the run's
    ``config.yaml`` beside the checkpoint (``runs/<run>/checkpoints/best.ckpt`` -> ``runs/<run>/config.yaml``).

    Raises:
        JobError: no example given and none found (names what to give).
    """
    from cfc_forecast.forecast.rows import read_rows

    if input_example is None:
        config = Path(ckpt_path).resolve().parents[1] / "config.yaml"
        try:
            data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
            input_example = (data.get("init_args") or data).get("path")
        except (OSError, yaml.YAMLError, AttributeError):
            input_example = None
        if not isinstance(input_example, str):
            raise JobError(
                f"no input example: {config} gives no data path; give --input_example rows.parquet (a few series "
                "in the training layout)"
            )
    frame, _ = read_rows(input_example, trained)
    if trained.id_column is not None:
        keep = frame[trained.id_column].drop_nulls().unique(maintain_order=True).head(EXAMPLE_SERIES)
        frame = frame.filter(pl.col(trained.id_column).is_in(keep.implode()))
    return frame


def signature_for(example: pl.DataFrame, output: pl.DataFrame) -> Any:
    """The model's signature: the example's columns (each optional), the output's, and the forecasting params."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inferred = infer_signature(example.to_pandas(), output.to_pandas())
    inputs = Schema([ColSpec(c.type, c.name, required=False) for c in inferred.inputs.inputs])
    params = ParamSchema([
        ParamSpec("origins", "string", [], shape=(-1,)),
        ParamSpec("query_times", "string", [], shape=(-1,)),
        ParamSpec("min_rows", "long", None),
    ])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=inferred.outputs, params=params)


def export(
    ckpt_path: str,
    format: Literal["mlflow"] = "mlflow",
    output: str | None = None,
    register: str | None = None,
    input_example: str | None = None,
) -> int:
    """Export a checkpoint as an MLflow pyfunc model folder (``output``) and / or a registered model (``register``).

    Args:
        ckpt_path: a checkpoint written by ``cfc-forecast fit``.
        format: "mlflow" (the only format so far).
        output: the model folder to write (must not exist yet).
        register: log the model to the tracking server (``MLFLOW_TRACKING_URI``) in a new run and register it
            under this name (a new version when the name exists).
        input_example: rows in the training layout (CSV / Parquet); default: the run's training data.

    Returns:
        The exit status: 0 written, 2 a user error.
    """
    try:
        return _export(ckpt_path, output, register, input_example)
    except UserError as err:  # JobError is a ValueError, not a UserError: both are one line
        return report("export", err)
    except JobError as err:
        return report("export", err, status=2)


def _export(ckpt_path: str, output: str | None, register: str | None, input_example: str | None) -> int:
    try:
        import mlflow
    except ImportError as err:
        raise JobError(f"--format mlflow needs MLflow ({err}); pip install 'cfc-forecast[deploy]'") from None
    if output is None and register is None:
        raise JobError("give --output DIR (a model folder), --register NAME (the tracking server's registry), or both")
    if output is not None and Path(output).exists():
        raise JobError(f"--output {output!r} exists; give a new folder (MLflow writes a model folder whole)")
    from cfc_forecast.forecast.scorer import Scorer

    scorer = Scorer(ckpt_path)
    example = example_rows(ckpt_path, scorer.trained, input_example)
    result = scorer.report(example, source="--input_example")
    if result.frame.height == 0:
        raise JobError("the input example yields no forecast (its series are skipped); give --input_example rows")
    with tempfile.TemporaryDirectory() as tmp:
        example_path = Path(tmp) / "input_example.parquet"
        example.write_parquet(example_path)
        kwargs = dict(
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(Path(ckpt_path).resolve()), "input_example": str(example_path)},
            code_paths=[str(PACKAGE), str(PACKAGE.parent / "datamodules")],
            pip_requirements=pinned_requirements(),
            input_example=example.to_pandas(),
            signature=signature_for(example, result.frame),
        )
        if output is not None:
            mlflow.pyfunc.save_model(output, **kwargs)
            print(f"MLflow model written to {output} (mlflow models serve -m {output} --env-manager local)")
        if register is not None:
            with mlflow.start_run(run_name=f"export {Path(ckpt_path).name}"):
                mlflow.log_param("ckpt_path", str(Path(ckpt_path).resolve()))
                info = mlflow.pyfunc.log_model(name="model", registered_model_name=register, **kwargs)
            print(f"registered {register} version {info.registered_model_version} ({info.model_uri})")
    return 0


def main(argv: list[str]) -> int:
    """``cfc-forecast export ARGS``: parse, export, return the exit status."""
    return auto_cli(export, args=argv, as_positional=False, prog="cfc-forecast export", exit_on_error=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
