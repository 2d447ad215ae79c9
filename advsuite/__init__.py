"""advsuite: a security evaluation suite for deep neural networks.

The Python API in one import::

    import advsuite
    model = advsuite.wrap_model(my_net, input_shape=(3, 32, 32), mean=..., std=...)
    attack = advsuite.build_attack("pgd", eps=[8 / 255])
    result = attack(model, x, y)                                   # an AttackResult
    record = advsuite.evaluate_and_record(model, attack, x, y)     # into the results store
    report = advsuite.audit(model, x, y, defense=my_defense)       # an adaptive-attack audit (docs/audit.md)
    record = advsuite.run("task=backdoor", "attack=badnets")       # any task, as the command line runs it
"""

from advsuite.api import (
    attack_names,
    audit,
    build_attack,
    defense_names,
    detector_names,
    evaluate_and_record,
    run,
    wrap_model,
)
from advsuite.attack import Attack, AttackResult
from advsuite.data import DataBundle, as_tensors, mnist5k
from advsuite.evaluation import Evaluation, evaluate
from advsuite.models import Classifier
from advsuite.models.zoo import load_model
from advsuite.oracles import LabelOracle, ScoreOracle, is_adversarial

__version__ = "0.1.0"

__all__ = [
    "Attack",
    "AttackResult",
    "Classifier",
    "DataBundle",
    "Evaluation",
    "LabelOracle",
    "ScoreOracle",
    "__version__",
    "as_tensors",
    "attack_names",
    "audit",
    "build_attack",
    "defense_names",
    "detector_names",
    "evaluate",
    "evaluate_and_record",
    "is_adversarial",
    "load_model",
    "mnist5k",
    "run",
    "wrap_model",
]
