"""Where dataset files live: one resolution order shared by every loader."""

from __future__ import annotations

import os
from pathlib import Path

from advsuite.data.bundle import DATA_ROOT_ENV
from advsuite.paths import advsuite_home

#: how to point advsuite at files, quoted in every "dataset not found" message
ROOT_HINT = f"pass dataset.root=/path/to/data or set the {DATA_ROOT_ENV} environment variable"


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder datasets are read from (and downloaded into).

    Resolution order: the explicit ``root`` argument (``dataset.root=...``), else ``$ADVSUITE_DATA``,
    else ``$ADVSUITE_HOME/data``, else ``~/.advsuite/data``. Empty strings count as unset, because a
    shell ``export ADVSUITE_DATA=`` should not silently mean the working directory.
    """
    if root is not None and str(root):
        return Path(root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return advsuite_home() / "data"


def resolve_under(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """``path`` itself when absolute, else ``path`` relative to :func:`data_root`."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else data_root(root) / candidate
