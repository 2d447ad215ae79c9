"""Verification at a fixed false-accept rate, and the pairs a face attack is judged on."""

from __future__ import annotations

import torch

from advsuite.data.bundle import class_mixed_order
from advsuite.errors import ConfigError, InputError


def threshold_at_far(emb: torch.Tensor, identity: torch.Tensor, far: float) -> tuple[float, dict[str, float]]:
    """The cosine threshold τ at which at most a fraction ``far`` of impostor pairs of ``emb`` match.

    ``emb`` is L2-normalised (N, D); all pairs are scored, same identity = genuine. Returns ``(τ, stats)`` with
    the achieved ``far``, the true-accept rate ``tar`` and the pair counts.
    """
    if not 0 <= far < 1:
        raise ConfigError(f"far must be a false-accept rate in [0, 1), got {far!r}")
    if len(emb) != len(identity) or len(emb) < 2:
        raise InputError(f"need at least two embeddings with one identity each, got {len(emb)} and {len(identity)}")
    sim = emb @ emb.T
    i, j = torch.triu_indices(len(emb), len(emb), offset=1)
    scores, genuine = sim[i, j], identity[i] == identity[j]
    impostor = scores[~genuine].sort(descending=True).values
    if len(impostor) == 0 or not genuine.any():
        raise InputError("need images of at least two identities and two images of one identity")
    k = int(far * len(impostor))  # at most k impostor pairs may reach the threshold
    tau = float(torch.nextafter(impostor[k], torch.tensor(float("inf"))))
    return tau, {
        "far": float((impostor >= tau).float().mean()),
        "tar": float((scores[genuine] >= tau).float().mean()),
        "n_genuine": float(genuine.sum()),
        "n_impostor": float(len(impostor)),
    }


def attack_pairs(identity: torch.Tensor, n: int, mode: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (source, reference) index pairs over images of ``identity``, identities taking turns.

    Dodging: the reference is another image of the source's identity (its enrolment photo); impersonation: an
    image of a different, seeded identity (the target). Sources need a second image of their identity.
    """
    counts = torch.bincount(identity - identity.min())
    usable = class_mixed_order(identity, seed)
    usable = usable[counts[identity[usable] - identity.min()] >= 2]
    if len(usable) == 0:
        raise InputError("no identity has two images: cannot form verification pairs")
    sources = usable[:n]
    gen = torch.Generator().manual_seed(int(seed) + 1)
    refs = torch.empty_like(sources)
    for k, s in enumerate(sources.tolist()):
        if mode == "dodging":
            same = (identity == identity[s]).nonzero().squeeze(1)
            same = same[same != s]
            refs[k] = same[torch.randint(len(same), (1,), generator=gen)]
        else:
            other = (identity != identity[s]).nonzero().squeeze(1)
            refs[k] = other[torch.randint(len(other), (1,), generator=gen)]
    return sources, refs


def verdicts(sim_clean: torch.Tensor, sim_adv: torch.Tensor, tau: float, mode: str) -> dict[str, float | None]:
    """Success at τ over the pairs the model judged correctly when clean (a genuine pair matched for dodging,
    an impostor pair rejected for impersonation)."""
    valid = sim_clean >= tau if mode == "dodging" else sim_clean < tau
    hit = (sim_adv < tau) if mode == "dodging" else (sim_adv >= tau)
    n = int(valid.sum())
    return {
        "n_valid": float(n),
        "success_rate": float(hit[valid].float().mean()) if n else None,
        "mean_similarity_clean": float(sim_clean.mean()),
        "mean_similarity_adv": float(sim_adv.mean()),
    }
