"""Every config in conf/ composes, and what it describes can be instantiated offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig

import advsuite.conf
from advsuite.attack import Attack

CONF = Path(advsuite.conf.__file__).parent


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_with(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_every_group_has_options() -> None:
    for group in ("task", "dataset", "model", "attack", "train", "defense"):
        assert options(group), f"conf/{group} is empty"


@pytest.mark.parametrize("attack", options("attack"))
def test_attack_configs_instantiate(attack: str) -> None:
    cfg = compose_with(f"attack={attack}")
    built = instantiate(cfg.attack)
    assert isinstance(built, Attack)
    assert built.threat_model in ("whitebox", "score", "label")


@pytest.mark.parametrize("group", ["dataset", "model", "train", "task", "defense"])
def test_group_options_compose(group: str) -> None:
    for option in options(group):
        cfg = compose_with(f"{group}={option}")
        assert cfg[group] is not None


def test_offline_datasets_instantiate() -> None:
    bundle = instantiate(compose_with("dataset=mnist5k").dataset)
    assert len(bundle.test) == 1000


def test_unknown_option_lists_valid_choices() -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_with("attack=does_not_exist")
    message = str(info.value)
    assert "does_not_exist" in message and "pgd" in message and "fgsm" in message


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_with("attack.no_such_key=1")
