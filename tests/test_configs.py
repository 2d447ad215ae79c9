"""Every config in conf/ composes, and what it describes can be instantiated offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig

import advsuite.conf
from advsuite.api import attack_names, defense_names
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


@pytest.mark.parametrize("attack", attack_names("evasion"))
def test_attack_configs_instantiate(attack: str) -> None:
    cfg = compose_with(f"attack={attack}")
    built = instantiate(cfg.attack)
    assert isinstance(built, Attack)
    assert built.access in ("whitebox", "score", "label")


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


# -- defaults live in the attack classes; a YAML sets only what the command line deliberately changes -----

_CURVE = [0.05, 0.1, 0.15, 0.2, 0.3]
#: every value an attack YAML sets that differs from its class's default; "group" = composed from conf/<group>
DELIBERATE: dict[str, dict[str, object]] = {
    "diva_pgd": {"method": "pgd"},  # the paper's baseline
    "fb_pgd": {"eps": _CURVE, "steps": 20, "rel_stepsize": 0.125},  # the same run as pgd.yaml
    "fgsm": {"eps": _CURVE},  # a robust-accuracy curve
    "pgd": {"eps": _CURVE, "steps": 20},  # a curve; 20 steps keep the default CPU run quick
    "pgd_l2": {"norm": "l2", "eps": [1.0, 1.5, 2.0, 2.5, 3.0], "steps": 20},
    "patch_gan": {"generator": "set"},  # the VAE's size and training, spelled out for the command line
    **{
        name: {"budget": 2000}  # the decision-based attacks' CLI budget (the papers' 1k/2k points)
        for name in ("hsja", "qeba", "qeba_s", "qeba_f")
    },
    **{name: {"budget": 2000, "prior": "group"} for name in ("qeba_i", "nlba_ae", "nlba_vae", "nlba_gan", "psba")},
    # the papers' fixed subspace, for reproduction
    "qeba_s_fixed": {"budget": 2000, "widen": "none"},
    "qeba_f_fixed": {"budget": 2000, "widen": "none"},
    "qeba_i_fixed": {"budget": 2000, "prior": "group", "widen": "none"},
}


@pytest.mark.parametrize("attack", attack_names("evasion"))
def test_attack_yaml_sets_only_fields_and_deliberate_differences(attack: str) -> None:
    import dataclasses

    from hydra.utils import get_class

    from advsuite.api import _attack_config
    from advsuite.attack import attack_options

    config = _attack_config(attack, seed=0, verbose=False)
    cls = get_class(str(config.pop("_target_")))
    assert set(config) <= set(attack_options(cls)), sorted(set(config) - set(attack_options(cls)))
    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        for f in dataclasses.fields(cls)
        if f.init and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
    }
    differs = {k: v for k, v in config.items() if k not in ("seed", "verbose") and v != defaults.get(k)}
    expected = DELIBERATE.get(attack, {})
    assert set(differs) == set(expected), f"{attack}: differs from the class in {sorted(differs)}"
    for key, value in expected.items():
        if value == "group":
            assert isinstance(differs[key], dict) and differs[key].get("kind")
        elif value != "set":
            assert differs[key] == value, (attack, key)


@pytest.mark.parametrize("attack", attack_names("poison"))
def test_poison_attack_configs_build_with_class_defaults(attack: str) -> None:
    import dataclasses

    from advsuite.attacks.backdoor import PoisonAttack
    from advsuite.attacks.backdoor.experiment import build_poison_attack

    config = compose_with(f"attack={attack}", "task=backdoor").attack
    built = build_poison_attack(config, attack)
    assert isinstance(built, PoisonAttack) and built.paper
    # every option listed (so the command line can set it), each null: the defaults live in the class only
    options = {f.name for f in dataclasses.fields(built) if f.init and not f.name.startswith("_")}
    assert set(config) - {"_target_"} == options and all(config[k] is None for k in options)
    assert build_poison_attack(compose_with(f"attack={attack}", "attack.rate=0.05").attack, attack).rate == 0.05


@pytest.mark.parametrize("defense", defense_names("poison"))
def test_backdoor_defense_configs_list_every_option_as_null(defense: str) -> None:
    import dataclasses

    from advsuite.defenses.backdoor import BackdoorDefense
    from advsuite.defenses.backdoor.task import build_backdoor_defense

    config = compose_with(f"defense={defense}", "task=backdoor_defense").defense
    built = build_backdoor_defense(config, defense)
    assert isinstance(built, BackdoorDefense) and built.name == defense == config.name and built.paper
    options = {f.name for f in dataclasses.fields(built) if f.init}  # type: ignore[arg-type]
    assert set(config) - {"_target_", "name"} == options and all(config[k] is None for k in options)


def test_attack_names_split_by_threat() -> None:
    assert attack_names("poison") == ["badnets", "blended", "lc", "sig", "wanet"]
    assert set(attack_names("evasion")) | set(attack_names("poison")) == set(attack_names())
    assert "pgd" in attack_names("evasion")


def test_qeba_is_qeba_s() -> None:
    from advsuite.api import _attack_config

    assert _attack_config("qeba", seed=0, verbose=False) == _attack_config("qeba_s", seed=0, verbose=False)
