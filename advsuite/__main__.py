"""``python -m advsuite``: compose the Hydra config and run the chosen task."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from advsuite.tasks import run_task


@hydra.main(version_base="1.3", config_path="pkg://advsuite.conf", config_name="config")
def _main(cfg: DictConfig) -> object:
    return run_task(cfg)


def main() -> None:
    """Console-script entry point (``advsuite ...``)."""
    _main()


if __name__ == "__main__":
    main()
