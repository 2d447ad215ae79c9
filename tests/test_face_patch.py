"""Face-verification patches: data, regions, thresholds, pairs, the attack's optimiser and task=face's checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image
from torch import nn

from advsuite.attacks.face import FacePatch, attack_pairs, region_mask, threshold_at_far, verdicts
from advsuite.attacks.face.patch import embed
from advsuite.attacks.face.task import embedder_specs, run_face
from advsuite.attacks.patch.generator import PatchVAE
from advsuite.configs import plugin_overrides
from advsuite.data.faces import identity_folder, lfw, standin
from advsuite.errors import ConfigError, DatasetNotFoundError


def tiny_embedder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten()).eval()


@pytest.fixture(scope="module")
def faces():
    return standin(n_identities=30, per_identity=5, image_size=32, eval_identities=8, seed=3)


def test_standin_holds_out_whole_identities_and_is_seeded(faces) -> None:
    again = standin(n_identities=30, per_identity=5, image_size=32, eval_identities=8, seed=3)
    assert torch.equal(faces.x_eval, again.x_eval) and torch.equal(faces.id_eval, again.id_eval)
    assert faces.train.num_classes == 22 and len(faces.id_eval.unique()) == 8
    assert len(faces.train.train) + len(faces.train.test) + len(faces.x_eval) == 150
    assert len(faces.train.test) == 22  # round(5 x 0.15) = 1 test image per training identity
    # another split of identities is another training set: cached embedders and generators must differ
    other = standin(n_identities=30, per_identity=5, image_size=32, eval_identities=8, seed=4)
    assert faces.train.info["fingerprint"] != other.train.info["fingerprint"]
    with pytest.raises(ConfigError, match="eval_identities"):
        standin(n_identities=30, per_identity=5, eval_identities=1)
    # identities are rendered from their own parameters: two images of one person are closer than two people
    x, ids = faces.x_eval, faces.id_eval
    same = (x[ids == ids[0]][0] - x[ids == ids[0]][1]).abs().mean()
    other = (x[ids == ids[0]][0] - x[ids != ids[0]][0]).abs().mean()
    assert same < other


def test_region_masks_and_bad_regions() -> None:
    eyes = region_mask("eyes", 32, 32)
    assert eyes.shape == (1, 1, 32, 32) and eyes[0, 0, 14].sum() > 0 and eyes[0, 0, 0].sum() == 0
    assert region_mask([0.0, 0.0, 0.5, 0.5], 10, 10).sum() == 25
    for bad in ("ears", [0.5, 0.1, 0.4, 0.9], [0, 0, 1]):
        with pytest.raises(ConfigError):
            region_mask(bad, 32, 32)


def test_threshold_meets_the_far_and_pairs_follow_the_mode() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 16, generator=gen)
    ids = torch.arange(20).repeat_interleave(4)
    emb = torch.nn.functional.normalize(centres[ids] + 0.3 * torch.randn(80, 16, generator=gen), dim=1)
    tau, stats = threshold_at_far(emb, ids, far=0.01)
    assert stats["far"] <= 0.01 and stats["tar"] > 0.5 and -1 < tau <= 1
    src, ref = attack_pairs(ids, 30, "dodging", seed=0)
    assert (ids[src] == ids[ref]).all() and (src != ref).all() and len(ids[src].unique()) == 20
    src, ref = attack_pairs(ids, 30, "impersonation", seed=0)
    assert (ids[src] != ids[ref]).all()
    v = verdicts(torch.tensor([0.9, 0.9, 0.1]), torch.tensor([0.1, 0.95, 0.0]), tau=0.5, mode="dodging")
    assert v["n_valid"] == 2 and v["success_rate"] == 0.5


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_dodging_patch_lowers_the_surrogates_similarity_inside_the_region_only(faces, space: str) -> None:
    surrogates = [tiny_embedder(0), tiny_embedder(1)]
    x, ids = faces.x_eval, faces.id_eval
    src, ref = attack_pairs(ids, 16, "dodging", seed=0)
    refs = [embed(m, x[ref]) for m in surrogates]
    generator = PatchVAE((3, 32, 32), latent_channels=2, widths=[8]).eval() if space == "latent" else None
    attack = FacePatch(mode="dodging", space=space, region="eyes", steps=15, di_prob=0.0, batch_size=8)
    x_adv, info = attack(surrogates, x[src], refs, generator)
    outside = region_mask("eyes", 32, 32) == 0
    assert torch.equal((x_adv - x[src]) * outside, torch.zeros_like(x_adv))
    before = sum((embed(m, x[src]) * r).sum(1).mean() for m, r in zip(surrogates, refs, strict=True))
    after = sum((embed(m, x_adv) * r).sum(1).mean() for m, r in zip(surrogates, refs, strict=True))
    assert after < before - 0.01
    assert info["fit_queries"] == 15 * 16 * 2 and len(info["objective"]) == 15


def test_impersonation_raises_the_similarity_to_the_target(faces) -> None:
    surrogate = tiny_embedder(2)
    x, ids = faces.x_eval, faces.id_eval
    src, ref = attack_pairs(ids, 12, "impersonation", seed=1)
    target = embed(surrogate, x[ref])
    attack = FacePatch(mode="impersonation", space="pixel", steps=20, step_size=0.02, di_prob=0.0, init="source")
    x_adv, _ = attack([surrogate], x[src], [target])
    before, after = (embed(surrogate, x[src]) * target).sum(1), (embed(surrogate, x_adv) * target).sum(1)
    # every pair moves towards its target (the patch covers a fifth of the face, so only part of the way)
    assert (after > before).all() and (after - before).mean() > 0.1 * (1 - before).mean()


def test_face_patch_rejects_bad_options() -> None:
    bad_options = ({"mode": "hide"}, {"space": "w+"}, {"ti_kernel": 4}, {"region": "ears"}, {"steps": 0},
                   {"latent_bound": None}, {"di_prob": "half"}, {"generator": {"epochs": 0}})  # fmt: skip
    for bad in bad_options:
        with pytest.raises(ConfigError):
            FacePatch(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="generator"):
        FacePatch(space="latent")([tiny_embedder(0)], torch.rand(2, 3, 32, 32), [torch.rand(2, 128)], None)


def test_identity_folder_and_missing_lfw(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    for person in range(5):
        (tmp_path / "faces" / f"person{person}").mkdir(parents=True)
        for k in range(3):
            pixels = (torch.rand(40, 40, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "faces" / f"person{person}" / f"{k}.png")
    data = identity_folder(root=str(tmp_path), path="faces", image_size=16, eval_identities=2)
    assert data.x_eval.shape == (6, 3, 16, 16) and data.train.num_classes == 3
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        identity_folder(root=str(tmp_path), path="nobody")
    with pytest.raises(DatasetNotFoundError, match="lfw-py"):
        lfw(root=str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="lfw-py"):  # torchvision refuses to download LFW itself
        lfw(root=str(tmp_path), download=True)


def face_config(*overrides: str):
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        return compose("config", overrides=plugin_overrides(["task=face", *overrides]))


def test_task_face_checks_its_attack_and_held_out_victims() -> None:
    with pytest.raises(ConfigError, match="needs face_attack=patch"):
        run_face(face_config("face_attack._target_=advsuite.attacks.patch.TransferPatch"))
    with pytest.raises(ConfigError, match="unknown face region"):
        run_face(face_config("face_attack.region=ears"))  # checked before any data or model loads
    with pytest.raises(ConfigError, match="no option 'regoin'"):
        run_face(face_config("face_attack.regoin=eyes"))
    cfg = face_config("model=smallcnn")
    with pytest.raises(ConfigError, match="also a surrogate"):
        embedder_specs(cfg, FacePatch(surrogates=["smallcnn", "resnet18"]))
    victims, surrogates = embedder_specs(face_config("model=convnet"), FacePatch())
    assert [v["name"] for v in victims] == ["convnet"] and surrogates == ["smallcnn", "resnet18"]


def test_custom_embedders_by_import_path() -> None:
    from advsuite.attacks.face.embedders import CustomEmbedder, is_custom_embedder

    model_custom = {"arch": "custom", "target": "torch.nn:Flatten", "embedding": True, "kwargs": {}}
    assert is_custom_embedder({"target": "torch.nn:Flatten"}) and is_custom_embedder(model_custom)
    assert not is_custom_embedder({"arch": "custom", "target": "torch.nn:Flatten"})  # a classifier over identities
    flat = CustomEmbedder({"target": "torch.nn:Flatten"})
    assert flat(torch.rand(2, 3, 4, 4)).shape == (2, 48) and flat.name == "Flatten"
    with pytest.raises(ConfigError, match="does not exist"):
        CustomEmbedder({"target": "torch.nn:Flatten", "checkpoint": "/nonexistent.safetensors"})
