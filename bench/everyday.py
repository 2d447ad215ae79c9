"""What each README "Everyday use" command costs: wall time of the command as a user types it, and its numbers.

Every command runs as its own process (`python -m advsuite ...`), one after another, in an advsuite home
made for this bench: "first time" commands start from an empty zoo (training included), "cached" ones
reuse what earlier commands trained. Run it on a quiet machine: two heavy jobs on two cores distort
every timing.

    ADVSUITE_DATA=/work/shared/data python bench/everyday.py --home /tmp/everyday --json bench/results/everyday.json
    python bench/everyday.py --only default_first,default_cached      # a subset, by name
    python bench/everyday.py --set docs --home /tmp/everyday --json bench/results/mnist_docs.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from advsuite.device import describe_machine

# (name, home, arguments, timeout in s): "fresh" homes start empty, "main"/"resnet50" ones are shared
COMMANDS: list[tuple[str, str, list[str], int]] = [
    ("default_first", "main", [], 900),
    ("default_cached", "main", ["redo=true"], 600),
    ("qeba_resnet50_first", "resnet50", ["attack=qeba", "model=resnet50"], 3600),
    ("fb_hsja_resnet50_5_images", "resnet50", ["attack=fb_hsja", "model=resnet50", "n_samples=5"], 3600),
    ("train_resnet50_cached", "resnet50", ["task=train", "model=resnet50"], 600),
    ("sweep_decision_based", "main", ["-m", "attack=hsja,qeba_s,qeba_f,qeba_i"], 7200),
    ("sweep_fgsm_pgd_models", "main", ["-m", "attack=fgsm,pgd", "model=smallcnn,resnet18"], 3600),
    ("prior_vae", "main", ["task=prior", "prior=vae"], 3600),
    ("patch_cifar10", "main", ["attack=patch", "dataset=cifar10_npz"], 3600),
    ("uap_datafree_cifar10", "main", ["attack=uap_datafree", "dataset=cifar10_npz"], 3600),
    ("diva_prune", "main", ["attack=diva", "attack.adaptation=prune", "attack.eps=0.2"], 3600),
    ("reversible_patch", "main", ["attack=reversible_patch"], 3600),
    ("leaderboard", "main", ["task=leaderboard"], 600),
    # the README's resnet50-on-CIFAR-10 line trains for a long time: time its first steps, then stop
    ("pgd_resnet50_cifar10_estimate", "fresh", ["attack=pgd", "model=resnet50", "dataset=cifar10_npz"], 150),
]
# --set docs: the MNIST numbers quoted in docs/attacks/ (mnist5k, zoo smallcnn), rerun on the class-mixed order
_DIVA = ["attack.eps=0.2", "attack.step_size=0.02", "n_samples=200"]
_UAP = ["attack.eps=0.2", "n_samples=500", "train.epochs=3"]
DOC_COMMANDS: list[tuple[str, str, list[str], int]] = [
    ("docs_whitebox_default_eps", "main", ["-m", "attack=pgd,pgd_l2", "n_samples=200"], 1800),
    ("docs_reversible_mnist", "main", ["attack=reversible_patch", "n_samples=200"], 1800),
    ("docs_diva_int8", "main", ["-m", "attack=diva,diva_pgd", *_DIVA], 1800),
    ("docs_diva_prune08", "main", ["-m", "attack=diva,diva_pgd", "attack.adaptation=prune", *_DIVA], 1800),
    (
        "docs_diva_prune05",
        "main",
        ["-m", "attack=diva,diva_pgd", "attack.adaptation=prune", "attack.sparsity=0.5", *_DIVA],
        1800,
    ),
    (
        "docs_diva_prune08_semi_blackbox",
        "main",
        ["-m", "attack=diva,diva_pgd", "attack.adaptation=prune", "attack.setting=semi_blackbox", *_DIVA],
        1800,
    ),
    ("docs_uap_mnist", "main", ["-m", "attack=uap_random,uap_datafree,uap_sgd", *_UAP], 3600),
    ("docs_uap_mnist_priors", "main", ["-m", "attack=uap_datafree", "attack.prior=range,data", *_UAP], 3600),
    ("docs_uap_mnist_divergence", "main", ["attack=uap_datafree", "attack.objective=divergence", *_UAP], 3600),
    # a sweep that sets an attack option with the plain syntax (it used to need ++attack.budget)
    ("sweep_attack_option", "main", ["-m", "attack=hsja,qeba_s,qeba_f", "attack.budget=300"], 1800),
]
SETS = {"readme": COMMANDS, "docs": DOC_COMMANDS}
METRICS = ("n_examples", "clean_accuracy", "robust_accuracy", "success_rate", "median_queries", "flips")


def run(args: list[str], home: Path, timeout: int) -> dict[str, Any]:
    env = {**os.environ, "ADVSUITE_HOME": str(home)}
    before = {str(p) for p in home.glob("**/record.json")}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "advsuite", *args], capture_output=True, text=True, env=env, timeout=timeout
        )
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    seconds = time.perf_counter() - start
    records = []
    for path in sorted(set(map(str, home.glob("**/record.json"))) - before):
        record = json.loads(Path(path).read_text())
        metrics = record.get("metrics") or {}
        records.append(
            {
                "attack": (record.get("names") or {}).get("attack"),
                "model": (record.get("names") or {}).get("model"),
                "status": record["status"],
                "duration_s": record.get("duration_s"),
                **{k: metrics.get(k) for k in METRICS},
                "robust_accuracy_by_eps": metrics.get("robust_accuracy_by_eps"),
                "extra": {k: v for k, v in metrics.items() if ":" in k or k.endswith(("_rate", "_success"))},
            }
        )
    estimate = re.findall(r"about [^\n]* in all at the first steps' pace", out + err)
    trained = re.findall(r"trained \(.*?\), clean accuracy [\d.]+%", err)
    return {
        "args": args,
        "returncode": rc,
        "seconds": round(seconds, 1),
        "records": records,
        "training_estimate": estimate,
        "trained": trained,
        "stdout_tail": out[-1500:],
        "stderr_tail": err[-800:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here (merged with what the file holds)")
    parser.add_argument("--set", choices=sorted(SETS), default="readme", help="which commands (default: readme)")
    parser.add_argument("--only", help="comma-separated command names")
    parser.add_argument("--home", type=Path, help="parent folder of the bench's advsuite homes (default: a temp dir)")
    args = parser.parse_args()
    base = args.home or Path(tempfile.mkdtemp(prefix="advsuite-everyday-"))
    chosen = set(args.only.split(",")) if args.only else None
    results: dict[str, Any] = {}
    if args.json and args.json.is_file():
        results = json.loads(args.json.read_text()).get("commands", {})
    for name, home_kind, command, timeout in SETS[args.set]:
        if chosen is not None and name not in chosen:
            continue
        home = Path(tempfile.mkdtemp(dir=base)) if home_kind == "fresh" else base / home_kind
        print(f"{name}: python -m advsuite {' '.join(command)}", flush=True)
        results[name] = run(command, home, timeout)
        print(f"  {results[name]['seconds']} s, rc {results[name]['returncode']}", flush=True)
        if args.json:  # after each command, so a long bench loses nothing when stopped
            payload = {
                "date": datetime.date.today().isoformat(),
                "machine": describe_machine(),
                "threads": __import__("torch").get_num_threads(),
                "commands": results,
            }
            args.json.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
