"""Check a study against the fit command's own parser before any trial runs: every key of the space and of
``fit_args`` must be a fit option that accepts the values the study will give it."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from cfc_forecast.cli import ForecastCLI
from cfc_forecast.tune.space import Param, cli_args

# keys the tuner sets for every trial; a study that sets them would fight it
# (resume: each trial is a fresh fit in its own folder; a killed study continues with `tune`, not with fit --resume)
RESERVED = ("run_dir", "runs_root", "test_after_fit", "ckpt_path", "trainer.callbacks", "trainer.fast_dev_run",
            "monitor", "monitor_mode", "resume")  # fmt: skip


class _Built(Exception):
    """Carries the fit parser out of the CLI's constructor before it parses anything."""

    def __init__(self, parser: Any) -> None:
        super().__init__("parser built")
        self.parser = parser


class _ParserOnly(ForecastCLI):
    """The fit command's parser exactly as ``cfc-forecast fit`` builds it (links, subclasses, extra options), with
    errors raised instead of printed-and-exited, and no abbreviated option names (``--model.hidden`` is not
    ``--model.hidden_size`` here)."""

    def init_parser(self, **kwargs: Any):
        return super().init_parser(**{**kwargs, "exit_on_error": False, "allow_abbrev": False})

    def parse_arguments(self, parser: Any, args: Any) -> None:
        raise _Built(parser)


class FitChecker:
    """Parses fit command lines over the base configs, as each trial's process will.

    Args:
        configs: the base fit configs, in order.
        fit_args: the study's fixed fit keys.
    """

    def __init__(self, configs: list[Path], fit_args: dict[str, Any]) -> None:
        try:
            _ParserOnly(args=[])
        except _Built as built:
            self.parser = built.parser
        self.base = [a for c in configs for a in ("--config", str(c))]
        self.fixed: list[str] = []
        self.config = self._parse(self.base, "the base fit config(s)")
        self.known = _flat_keys(self.config.fit.as_dict())
        for key, value in fit_args.items():
            self.check_key(key, [value], f"fit_args: {key}")
        self.fixed = cli_args(fit_args)
        self.config = self._parse([*self.base, *self.fixed], "fit_args")

    def _parse(self, args: list[str], what: str) -> Any:
        try:
            return self.parser.parse_args(["fit", *args])
        except Exception as err:  # jsonargparse's ArgumentError and the errors of linked or typed values
            raise ValueError(f"{what}: the fit command rejects {' '.join(args[len(self.base) :]) or args}: "
                             f"{_reason(err)}") from None  # fmt: skip

    def check_key(self, key: str, values: list[Any], where: str) -> None:
        """Parse the base configs with ``key`` set to each of ``values``.

        Raises:
            ValueError: naming ``where``, the key, the value and the parser's reason, with the closest fit keys.
        """
        if any(key == r or key.startswith(r + ".") for r in RESERVED):
            raise ValueError(f"{where}: {key!r} is set by the tuner for every trial; remove it from the study")
        for value in values:
            arg = cli_args({key: value})
            try:
                self.parser.parse_args(["fit", *self.base, *self.fixed, *arg])
            except Exception as err:
                hint = difflib.get_close_matches(key, self.known, n=3, cutoff=0.6)
                near = f"; did you mean {', '.join(hint)}?" if hint and key not in self.known else ""
                raise ValueError(
                    f"{where}: the fit command rejects {arg[0]}: {_reason(err)}{near} "
                    f"(`cfc-forecast fit --config {self.base[1]} --print_config` lists every key)"
                ) from None

    def check_space(self, space: list[Param]) -> None:
        """Every key of the space with its extreme values, then all keys together at their first values."""
        for param in space:
            self.check_key(param.key, param.extremes(), f"space: {param.key}")
        together = cli_args({p.key: p.extremes()[0] for p in space})
        self._parse([*self.base, *self.fixed, *together], "the space's keys together")

    @property
    def test_after_fit(self) -> bool:
        """Whether the base configs test after fitting (the best config keeps that; trials never test)."""
        return bool(self.config.fit.test_after_fit)


def _flat_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys.extend(_flat_keys(value, name + ".") if isinstance(value, dict) and value else [name])
        if name.endswith(".init_args"):  # data.init_args.x is also written data.x
            keys.extend(_flat_keys(value, prefix) if isinstance(value, dict) else [])
    return keys


def _reason(err: Exception) -> str:
    """The lines of a jsonargparse error that say what is wrong (its union errors list every subtype tried)."""
    lines = [line.strip(" -") for line in str(err).splitlines() if line.strip(" -")]
    telling = ("unrecognized", "not accepted", "Expected a", "Problem with", "must be")
    useful = [line for line in lines if any(t in line for t in telling) and "NoneType" not in line]
    return " ".join(useful or lines[:4])
