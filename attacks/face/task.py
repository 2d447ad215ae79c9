"""``task=face``: transferable face-verification patches, judged on held-out embedders at a fixed FAR.

    python -m advsuite task=face model=convnet                                   # offline stand-in
    python -m advsuite task=face faces=lfw model=convnet      # LFW's files under <data root>/lfw-py
    python -m advsuite task=face model=convnet face_attack.space=pixel face_attack.mode=impersonation

Flow: load the face data (``faces=``), train or load every embedder on the training identities (the victims:
``task.victims``, default the run's ``model``; the surrogates: ``face_attack.surrogates``), fix each embedder's
threshold at ``task.far`` on all pairs of the held-out identities, form ``n_samples`` attack pairs among
them, build the face generator (latent space), run the attack on the surrogates, then judge every patched
face on each victim (transfer) and surrogate (white-box). The summary goes to ``face.json`` in the run folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from advsuite.configs import to_plain
from advsuite.data.faces import FaceData
from advsuite.device import resolve_device
from advsuite.errors import AdvsuiteError, ConfigError
from advsuite.models.surrogates import reference_spec
from advsuite.models.zoo import load_model
from advsuite.paths import advsuite_home
from advsuite.seeding import seed_everything

from ..patch.generator import load_patch_generator
from .embedders import CustomEmbedder, PenultimateEmbedder, is_custom_embedder
from .patch import FacePatch, embed
from .regions import region_box
from .verification import attack_pairs, threshold_at_far, verdicts


def build_face_attack(cfg: DictConfig) -> FacePatch:
    """``cfg.face_attack`` as a :class:`FacePatch`; a clear error if it is missing or something else."""
    node = cfg.get("face_attack")
    target = str(node.get("_target_", "")) if node is not None else ""
    if not target.endswith("FacePatch"):
        raise ConfigError(f"task=face needs face_attack=patch, got {target or 'no face_attack config'!r}")
    unknown = sorted(set(node) - {"_target_", *FacePatch.options()})
    if unknown:
        raise ConfigError(f"face_attack has no option {unknown[0]!r}; valid options: {', '.join(FacePatch.options())}")
    options = {k: v for k, v in (to_plain(node) or {}).items() if k != "_target_"}
    return FacePatch(**options)  # its own checks raise ConfigError (Hydra's instantiate would wrap them)


def embedder_specs(cfg: DictConfig, attack: FacePatch) -> tuple[list[Any], list[Any]]:
    """(victims, surrogates) as zoo names / inline specs / custom embedder specs; a victim that is also a
    surrogate (same architecture, or the same custom target) is refused: transfer needs held-out models."""
    victims = to_plain(cfg.task.get("victims")) or [to_plain(cfg.model)]
    surrogates = to_plain(attack.surrogates)
    victims = victims if isinstance(victims, list) else [victims]
    surrogates = surrogates if isinstance(surrogates, list) else [surrogates]
    if not surrogates:
        raise ConfigError("face_attack.surrogates must list at least one embedder")

    def ident(spec: Any) -> str:
        if is_custom_embedder(spec):
            return f"custom:{spec['target']}"
        return str(reference_spec(spec)["arch"])

    held = {ident(s) for s in surrogates}
    if clash := sorted(ident(v) for v in victims if ident(v) in held):
        raise ConfigError(
            f"victim {clash[0]} is also a surrogate; a transfer attack is judged on held-out embedders "
            "(change model=/task.victims or face_attack.surrogates)"
        )
    return victims, surrogates


def load_embedder(spec: Any, data: FaceData, cfg: DictConfig, recipe: dict[str, Any]) -> tuple[nn.Module, dict]:
    """An embedder and what it is: trained/loaded through the zoo on the training identities, or custom."""
    if is_custom_embedder(spec):
        model = CustomEmbedder(spec)
        return model.to(resolve_device(cfg.get("device", "auto"))), {"name": model.name, "source": "custom"}
    zoo_spec = reference_spec(spec, recipe)
    classifier = load_model(
        zoo_spec,
        data.train,
        device=cfg.get("device", "auto"),
        cache_dir=Path(advsuite_home(cfg.paths.home)) / "zoo",
        seed=int(cfg.seed),
        verbose=bool(cfg.get("verbose", True)),
    )
    info = {"name": zoo_spec["name"], "identity_accuracy": classifier.info.get("clean_accuracy")}
    return PenultimateEmbedder(classifier), {**info, "source": classifier.info.get("source")}


def judge(
    model: nn.Module, x_eval: torch.Tensor, id_eval: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor],
    x_adv: torch.Tensor, far: float, mode: str,
) -> dict[str, Any]:  # fmt: skip
    """τ at ``far`` on the held-out identities, then success of the patched sources at τ."""
    emb = embed(model, x_eval)
    tau, stats = threshold_at_far(emb, id_eval, far)
    sources, refs = pairs
    clean = (emb[sources] * emb[refs]).sum(1)
    adv = (embed(model, x_adv) * emb[refs]).sum(1)
    return {"threshold": tau, "tar": stats["tar"], "far": stats["far"], **verdicts(clean, adv, tau, mode)}


def run_face(cfg: DictConfig) -> dict[str, Any]:
    attack = build_face_attack(cfg)
    far = float(cfg.task.get("far", 1e-3))
    if not 0 < far < 1:
        raise ConfigError(f"task.far is a false-accept rate in (0, 1), got {far!r}")
    victims, surrogates = embedder_specs(cfg, attack)
    seed_everything(int(cfg.seed))
    try:
        data = instantiate(cfg.faces)
    except InstantiationException as exc:  # Hydra wraps the loader's own one-line errors
        if isinstance(exc.__cause__, AdvsuiteError):
            raise exc.__cause__ from None
        raise
    if not isinstance(data, FaceData):
        raise ConfigError(f"faces config must instantiate FaceData, got {type(data).__name__}")
    recipe = dict(to_plain(attack.embedder_recipe) or {})
    start = time.perf_counter()
    loaded_v = [load_embedder(s, data, cfg, recipe) for s in victims]
    loaded_s = [load_embedder(s, data, cfg, recipe) for s in surrogates]
    device = resolve_device(cfg.get("device", "auto"))
    generator = None
    if attack.space == "latent":
        side = int(data.train.input_shape[-1])
        generator = load_patch_generator(
            data.train, side, attack.generator, cache_dir=Path(advsuite_home(cfg.paths.home)) / "zoo",
            seed=int(cfg.seed), device=device, verbose=bool(cfg.get("verbose", True)),
        )  # fmt: skip
    pairs = attack_pairs(data.id_eval, int(cfg.n_samples), attack.mode, int(cfg.seed))
    sources, refs = pairs
    x_src = data.x_eval[sources].to(device)
    ref_emb = [embed(m, data.x_eval[refs]).to(device) for m, _ in loaded_s]
    prepared = time.perf_counter()
    x_adv, info = attack([m for m, _ in loaded_s], x_src, ref_emb, generator)
    x_adv = x_adv.cpu()
    attacked = time.perf_counter()
    delta = (x_adv - data.x_eval[sources]).flatten(1)
    summary: dict[str, Any] = {
        "faces": data.name,
        "faces_info": data.info,
        "attack": {name: to_plain(getattr(attack, name)) for name in FacePatch.options()},
        "region_box": list(region_box(attack.region)),
        "far": far,
        "n_pairs": len(sources),
        "victims": {
            i["name"]: {**i, **judge(m, data.x_eval, data.id_eval, pairs, x_adv, far, attack.mode)} for m, i in loaded_v
        },
        "surrogates": {
            i["name"]: {**i, **judge(m, data.x_eval, data.id_eval, pairs, x_adv, far, attack.mode)} for m, i in loaded_s
        },
        "fit_queries": info["fit_queries"],
        "objective_first_last": [info["objective"][0], info["objective"][-1]],
        "median_linf": float(delta.abs().amax(1).median()),
        "median_l2": float(delta.norm(dim=1).median()),
        "generator": None if generator is None else generator.info.get("metrics"),
        "prepare_s": prepared - start,
        "attack_s": attacked - prepared,
    }
    rates = [v["success_rate"] for v in summary["victims"].values() if v["success_rate"] is not None]
    summary["transfer_success"] = sum(rates) / len(rates) if rates else None
    out = Path(cfg.task.get("output_dir") or ".") / "face.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(_format(summary))
    print(f"wrote {out}")
    return summary


def _format(s: dict[str, Any]) -> str:
    a = s["attack"]
    lines = [
        f"face patch: {a['mode']}, space {a['space']}, region {a['region']}, {s['n_pairs']} pairs of {s['faces']}, "
        f"FAR {s['far']:g}",
    ]
    for role in ("victims", "surrogates"):
        for name, r in s[role].items():
            rate = "n/a" if r["success_rate"] is None else f"{r['success_rate']:.3f}"
            lines.append(
                f"  {role[:-1]:9s} {name:12s} τ {r['threshold']:.3f} (TAR {r['tar']:.3f})  success {rate} "
                f"over {int(r['n_valid'])} pairs  similarity {r['mean_similarity_clean']:.3f} -> "
                f"{r['mean_similarity_adv']:.3f}"
            )
    return "\n".join(lines)
