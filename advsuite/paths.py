"""Where advsuite keeps its state: the zoo cache, run directories and the results index."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "ADVSUITE_HOME"


def advsuite_home(override: str | os.PathLike[str] | None = None) -> Path:
    """``override``, else ``$ADVSUITE_HOME``, else ``~/.advsuite``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".advsuite"
