"""Where the real datasets and the parse cache live by default."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir(path: str | None = None) -> Path:
    """``path``, else ``$CFC_FORECAST_DATA``, else ``../shared/data`` next to the project root."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get("CFC_FORECAST_DATA"):
        return Path(os.environ["CFC_FORECAST_DATA"]).expanduser()
    return PROJECT_ROOT.parent / "shared" / "data"


def cache_dir(path: str | None = None) -> Path:
    """``path``, else ``$CFC_FORECAST_CACHE``, else ``$XDG_CACHE_HOME/cfc_forecast`` (``~/.cache/cfc_forecast``).

    Never inside the data folder: shared data folders are read-only.
    """
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get("CFC_FORECAST_CACHE"):
        return Path(os.environ["CFC_FORECAST_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "cfc_forecast"


def require_file(path: Path, what: str) -> Path:
    """``path`` if it exists, else a ``ValueError`` saying what is missing and where it comes from."""
    if not path.exists():
        raise ValueError(
            f"{what} not found at {path}; pass data_dir=<folder> or set CFC_FORECAST_DATA "
            "(see ../shared/data/README.md for the files and their sources)"
        )
    return path


def sha256_of(paths: list[Path]) -> str:
    """Hex sha256 over the bytes of ``paths`` in order (the key of a parse cache)."""
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
