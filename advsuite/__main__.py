"""``python -m advsuite``: compose the Hydra config and run the chosen task.

Two things happen around Hydra. Options of the plugin groups (``attack.budget=300``) are handed to
Hydra as add-or-override (``++attack.budget=300``), because advsuite checks them itself against what
the plugin declares (with the list of valid options); Hydra alone would refuse an option the
*default* attack lacks in a sweep over attacks. And an error the user can fix
(:class:`~advsuite.errors.AdvsuiteError`) is printed as one line instead of a traceback;
``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import os
import re
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from advsuite.configs import plugin_overrides
from advsuite.errors import AdvsuiteError
from advsuite.paths import HOME_ENV, advsuite_home

#: one line per failed job of a sweep (the others still run); the process then exits with status 1
_failures: list[str] = []


def _full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _report(message: str) -> None:
    print(f"advsuite: error: {message}", file=sys.stderr)


@hydra.main(version_base="1.3", config_path="pkg://advsuite.conf", config_name="config")
def _main(cfg: DictConfig) -> object:
    from advsuite.tasks import run_task

    try:
        return run_task(cfg)
    except AdvsuiteError as exc:
        if _full_errors():
            raise
        _report(str(exc))
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            _failures.append(f"job {HydraConfig.get().job.num} ({' '.join(HydraConfig.get().overrides.task)}): {exc}")
            return None
        sys.exit(1)


def _check_home(args: list[str]) -> None:
    """The home must be writable before Hydra creates the run directory inside it."""
    given = [a.split("=", 1)[1] for a in args if re.match(r"^\+{0,2}paths\.home=", a)]
    home = advsuite_home(given[-1] if given else None)
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        _report(
            f"cannot write to the advsuite home {home} ({err.strerror or err}); set {HOME_ENV}=/a/writable/folder "
            "or paths.home=/a/writable/folder"
        )
        sys.exit(1)


def main() -> None:
    """Console-script entry point (``advsuite ...``)."""
    sys.argv[1:] = plugin_overrides(sys.argv[1:])
    if not any(a.startswith(("--help", "-h", "--hydra-help", "--info", "--cfg", "-c", "--shell")) for a in sys.argv):
        _check_home(sys.argv[1:])
    _main()
    if _failures:
        print(
            f"advsuite: {len(_failures)} job(s) of the sweep failed; each run's record.json says why:", file=sys.stderr
        )
        for line in _failures:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
