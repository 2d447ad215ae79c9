"""White-box Linf PGD throughput: advsuite's native PGD vs foolbox LinfPGD vs a plain torch loop.

All three run on the same Classifier, the same images, eps, steps and step size (2.5·eps/steps, random
start), in one process, with interleaved repetitions (the order rotates every repetition). Each
method's best and median wall time are reported as images×steps per second, with the ratios
native/plain and native/foolbox and each method's robust accuracy (they must agree up to the random
start). On a shared machine the best of N (as ``timeit`` does) is the steadier estimate of what a
method costs; the median shows the spread.

Models are trained here (and cached under ``$ADVSUITE_HOME/bench_cache``) so the bench does not depend
on the zoo: a small MNIST CNN (2 conv + 2 fc) and a small CIFAR-10 CNN (4 conv+BN blocks), a couple of
epochs each: throughput does not depend on how well they are trained.

    ADVSUITE_DATA=/work/shared/data python bench/whitebox.py            # both models, 256 images, 20 steps
    python bench/whitebox.py --models mnist --reps 5 --json bench/results/whitebox.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import foolbox as fb
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advsuite.attacks.whitebox import PGD
from advsuite.models import Classifier
from advsuite.paths import advsuite_home

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
Data = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------------- data and models


def load_mnist(root: Path, train: bool) -> Data:
    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=train, download=False)
    return (ds.data.float() / 255).unsqueeze(1), ds.targets.long()


def load_cifar(root: Path, train: bool) -> Data:
    arrays = np.load(root / "cifar10-jpeg" / ("train.npz" if train else "test.npz"))
    x = torch.from_numpy(arrays["x"]).permute(0, 3, 1, 2).float() / 255
    return x.contiguous(), torch.from_numpy(arrays["y"].astype(np.int64))


def mnist_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def cifar_cnn() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


@dataclass(frozen=True)
class Setup:
    """One benchmarked model: data loader, architecture, training epochs, eps and normalisation."""

    load: Callable[[Path, bool], Data]
    make: Callable[[], nn.Module]
    epochs: int
    eps: float
    check_eps: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


SETUPS = {
    "mnist": Setup(load_mnist, mnist_cnn, 1, 0.3, 0.1, MNIST_MEAN, MNIST_STD),
    "cifar": Setup(load_cifar, cifar_cnn, 2, 8 / 255, 1 / 255, CIFAR_MEAN, CIFAR_STD),
}


def trained(name: str, setup: Setup, train: Data) -> Classifier:
    """Train (or load from the bench cache) a classifier with Adam, batch 128, seed 0."""
    torch.manual_seed(0)
    shape = tuple(train[0].shape[1:])
    model = Classifier(setup.make(), num_classes=10, input_shape=shape, mean=setup.mean, std=setup.std, name=name)
    epochs = setup.epochs
    path = advsuite_home() / "bench_cache" / f"{name}-{epochs}ep.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    x, y = train
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(epochs):
        start = time.perf_counter()
        for batch in torch.randperm(len(x), generator=gen).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
        print(f"  trained {name} epoch {epoch + 1}/{epochs} in {time.perf_counter() - start:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


# ----------------------------------------------------------------------------------- the three PGDs


def plain_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int) -> torch.Tensor:
    """The baseline: a hand-written Madry et al. loop, no checks."""
    alpha = 2.5 * eps / steps
    gen = torch.Generator().manual_seed(seed)
    x_adv = (x + (2 * torch.rand(x.shape, generator=gen) - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        model(x_adv).argmax(1)  # the success check every attack ends with
    return x_adv


def native_pgd(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int) -> torch.Tensor:
    return PGD(norm="linf", eps=eps, steps=steps, seed=seed)(model, x, y).x_adv


def foolbox_pgd(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
    attack = fb.attacks.LinfPGD(rel_stepsize=2.5 / steps, steps=steps, random_start=True)
    _, x_adv, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=eps)
    return x_adv


METHODS: dict[str, Callable[..., torch.Tensor]] = {"native": native_pgd, "foolbox": foolbox_pgd, "plain": plain_pgd}


def bench_model(
    model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, reps: int, check_eps: float
) -> dict:
    """Interleaved repetitions of the three methods on the same model and images.

    At the benchmark's eps an undefended model keeps no robust accuracy, so agreement is also checked
    (untimed) at ``check_eps``, where robust accuracy is in between.
    """
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    robust: dict[str, list[float]] = {name: [] for name in METHODS}
    validate, model.validate_inputs = model.validate_inputs, False  # the same forward for all three
    try:
        for fn in METHODS.values():  # warm-up (allocator, first-call costs)
            fn(model, x, y, eps, 2, 0)
        names = list(METHODS)
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                start = time.perf_counter()
                x_adv = METHODS[name](model, x, y, eps, steps, rep)
                times[name].append(time.perf_counter() - start)
                with torch.no_grad():
                    assert float((x_adv - x).abs().max()) <= eps + 1e-5
                    robust[name].append(float((model(x_adv).argmax(1) == y).float().mean()))
        robust_check = {}
        for name, fn in METHODS.items():
            x_adv = fn(model, x, y, check_eps, steps, 0)
            with torch.no_grad():
                robust_check[name] = float((model(x_adv).argmax(1) == y).float().mean())
    finally:
        model.validate_inputs = validate
    out: dict = {"clean_accuracy": clean, "check_eps": check_eps, "methods": {}}
    for name in METHODS:
        best, median = min(times[name]), statistics.median(times[name])
        out["methods"][name] = {
            "seconds": times[name],
            "best_seconds": best,
            "median_seconds": median,
            "images_steps_per_s": len(x) * steps / best,
            "images_steps_per_s_median": len(x) * steps / median,
            "robust_accuracy": statistics.mean(robust[name]),
            "robust_accuracy_check_eps": robust_check[name],
        }
    for stat in ("", "_median"):
        rate = {name: out["methods"][name][f"images_steps_per_s{stat}"] for name in METHODS}
        out[f"native_over_plain{stat}"] = rate["native"] / rate["plain"]
        out[f"native_over_foolbox{stat}"] = rate["native"] / rate["foolbox"]
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("ADVSUITE_DATA", "/work/shared/data")))
    parser.add_argument("--models", default="mnist,cifar")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "foolbox": fb.__version__,
        "threads": torch.get_num_threads(),
        "n": args.n,
        "steps": args.steps,
        "reps": args.reps,
        "models": {},
    }
    for key in args.models.split(","):
        setup = SETUPS[key]
        eps = setup.eps
        print(f"{key}: loading data and model")
        model = trained(f"bench-{key}-cnn", setup, setup.load(args.data, True))
        x_test, y_test = setup.load(args.data, False)
        pick = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(0))[: args.n]
        print(f"{key}: {args.reps} interleaved repetitions, {args.n} images, {args.steps} steps, eps {eps:.4g}")
        res = bench_model(model, x_test[pick], y_test[pick], eps, args.steps, args.reps, setup.check_eps)
        results["models"][key] = {"eps": eps, **res}

    print()
    print(
        "| model | clean acc | method | best s | median s | images×steps/s (best) | (median) | robust acc "
        "| robust acc at check eps |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key, res in results["models"].items():
        for name, m in res["methods"].items():
            print(
                f"| {key} (eps {res['eps']:.4g}) | {res['clean_accuracy']:.3f} | {name} | {m['best_seconds']:.2f} "
                f"| {m['median_seconds']:.2f} | {m['images_steps_per_s']:,.0f} | {m['images_steps_per_s_median']:,.0f} "
                f"| {m['robust_accuracy']:.3f} | {m['robust_accuracy_check_eps']:.3f} (eps {res['check_eps']:.4g}) |"
            )
    print()
    for key, res in results["models"].items():
        for stat, label in (("", "best"), ("_median", "median")):
            plain, fool = res[f"native_over_plain{stat}"], res[f"native_over_foolbox{stat}"]
            print(f"{key} ({label}): native/plain = {plain:.2f}, native/foolbox = {fool:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
