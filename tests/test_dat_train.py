"""DAT against its single-process reference: a correct run is equivalent, every injected bug is caught."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advsuite.distributed.bugs import BUGS
from advsuite.distributed.recipe import DatRecipe
from advsuite.distributed.tracing import spawn_trace, trace_verdict
from advsuite.errors import ConfigError
from advsuite.training import Recipe


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 5 * 5, 10))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def recipe(**kw) -> DatRecipe:
    base = {"trainer": "dat", "epochs": 1, "batch_size": 16, "workers": 2, "adversarial": "pgd", "adv_eps": 0.1,
            "adv_steps": 2, "augment": "none", "lr": 0.01, "optimizer": "lalr"}  # fmt: skip
    out = Recipe.coerce({**base, **kw})
    assert isinstance(out, DatRecipe)
    return out


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(64, 1, 12, 12, generator=gen), torch.randint(0, 10, (64,), generator=gen)


#: (bug, recipe changes it needs)
SCENARIOS = [
    ("none", {}),
    ("none", {"workers": 4}),  # two workers per process: the gradients are summed in another order
    ("none", {"precision": "bf16"}),
    *[(name, {"workers": 4} if name == "accum_unscaled" else {}) for name in BUGS if name != "none"],
]


@pytest.fixture(scope="module")
def traced(data):
    torch.manual_seed(0)
    model = TinyBN()
    recipes = [recipe(bug=bug, **kw) for bug, kw in SCENARIOS]
    runs = spawn_trace(model, recipes, *data, seed=0, steps=2, world=2)
    return model, recipes, runs


@pytest.mark.parametrize(
    "index", range(len(SCENARIOS)), ids=[f"{b}-{'-'.join(map(str, k.values()))}" for b, k in SCENARIOS]
)
def test_two_processes_against_the_reference(traced, data, index: int):
    model, recipes, runs = traced
    bug = SCENARIOS[index][0]
    traces, init = runs[index]
    verdict = trace_verdict(model, init, recipes[index], *data, 0, 2, traces)
    if bug == "none":
        assert verdict.equivalent, verdict.summary()
    else:
        first = verdict.first_divergent
        assert first is not None, f"{bug} went undetected: {verdict.summary()}"
        path, kind = BUGS[bug].site
        assert (f":{kind}" in first.key and path in first.key) or kind == "", (bug, verdict.summary())


def test_an_unknown_bug_lists_the_choices():
    with pytest.raises(ConfigError, match="bug must be one of none, grad_sum"):
        recipe(bug="nope")


def test_a_batch_the_workers_cannot_share_is_refused():
    with pytest.raises(ConfigError, match="not divisible by workers=3"):
        recipe(workers=3)
