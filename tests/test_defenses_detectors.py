"""The defense and detector protocols and their first members: bit-depth reduction and feature squeezing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from advsuite.attacks.whitebox.pgd import PGD
from advsuite.data import DataBundle, as_tensors
from advsuite.defense import Defense, defend
from advsuite.defenses import BitDepthReduction
from advsuite.detector import Detector, detection_metrics, detection_step, threshold_at_fpr
from advsuite.detectors import FeatureSqueezing, MedianSmoothing
from advsuite.errors import ConfigError, InputError
from advsuite.evaluation import evaluate
from advsuite.models import Classifier

pytestmark = pytest.mark.numerics


def test_bit_depth_rounds_to_its_levels_and_refuses_bad_depths() -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for bits in (1, 3, 8):
        out = BitDepthReduction(bits)(x)
        levels = 2**bits - 1
        assert torch.equal(out, torch.round(out * levels) / levels) and 0 <= float(out.min()) <= float(out.max()) <= 1
        assert len(out.unique()) <= levels + 1 and torch.equal(BitDepthReduction(bits)(out), out)
    assert not BitDepthReduction.differentiable and not BitDepthReduction.randomized
    for bad in (0, 9, 2.5, True):
        with pytest.raises(ConfigError, match="bits must be a whole number from 1 to 8"):
            BitDepthReduction(bad)  # type: ignore[arg-type]


def test_defended_model_predicts_on_the_squeezed_input_and_passes_bpda_gradients(tiny_model: Classifier) -> None:
    x, _ = as_tensors_first(tiny_model)
    squeeze = BitDepthReduction(1)
    defended = defend(tiny_model, squeeze)
    assert defend(tiny_model, None) is tiny_model
    assert torch.equal(defended.predict(x), tiny_model.predict(squeeze(x)))
    assert defended.info["defense"] == "bit_depth" and not defended.training
    # BPDA: the forward pass is the defense, the backward pass the identity surrogate
    xs = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(defended(xs), defended.predict(x)).backward()
    xq = squeeze(x).requires_grad_(True)
    torch.nn.functional.cross_entropy(tiny_model(xq), defended.predict(x)).backward()
    assert xs.grad is not None and xq.grad is not None and float(xs.grad.abs().sum()) > 0
    assert torch.allclose(xs.grad, xq.grad)


def test_bpda_pgd_breaks_bit_depth_reduction(tiny_model: Classifier, mnist: DataBundle) -> None:
    """Athalye et al.'s result: through the identity surrogate, PGD at ε = 0.3 leaves (almost) nothing robust."""
    x, y = as_tensors(mnist.test, 200)
    ev = evaluate(defend(tiny_model, BitDepthReduction(4)), PGD(eps=0.3, steps=20), x, y, verbose=False)
    assert ev.metrics["clean_accuracy"] > 0.9 and ev.metrics["robust_accuracy"] < 0.05  # seen: 0.965, 0.0
    assert ev.metrics["flips"] == 0  # success was re-checked on the defended model


def test_a_defense_must_be_a_defense() -> None:
    with pytest.raises(ConfigError, match="not an advsuite Defense"):
        defend(Classifier(torch.nn.Flatten(), num_classes=4, input_shape=(1, 2, 2)), torch.nn.Identity())  # type: ignore[arg-type]
    assert issubclass(MedianSmoothing, Defense)


def test_threshold_and_metrics_are_exact_on_known_scores() -> None:
    clean = torch.arange(100, dtype=torch.float64)  # 0..99
    assert threshold_at_fpr(clean, 0.05) == 94.0  # 95..99 lie above: exactly 5%
    assert threshold_at_fpr(clean, 0.0) == 99.0
    perfect = detection_metrics(clean, clean + 100)
    assert perfect == {"auroc": 1.0, "tpr_at_fpr": 1.0, "fpr": 0.05, "threshold": 94.0}
    assert detection_metrics(clean, clean - 100)["auroc"] == 0.0
    assert detection_metrics(clean, clean.clone())["auroc"] == 0.5  # ties count half
    with pytest.raises(ConfigError, match="fpr"):
        threshold_at_fpr(clean, 1.0)
    with pytest.raises(InputError, match="need clean and adversarial"):
        detection_metrics(clean, clean[:0])


def test_median_smoothing_removes_an_isolated_pixel() -> None:
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 2, 3] = 1.0
    assert float(MedianSmoothing(3)(x).abs().max()) == 0.0
    flat = torch.full((2, 3, 5, 5), 0.4)
    assert torch.equal(MedianSmoothing(2)(flat), flat)


def test_feature_squeezing_detects_pgd_at_its_false_positive_rate(tiny_model: Classifier, mnist: DataBundle) -> None:
    """200 clean images to calibrate, 200 others and their PGD versions to measure (seen: AUROC 0.94, TPR 0.81):
    with 200 of each, the AUROC's standard error is about 0.02 and a rate's at most 0.035."""
    x, y = as_tensors(mnist.test, 400)
    adversarial = PGD(eps=0.2, steps=20)(tiny_model, x, y).x_adv
    detector = FeatureSqueezing(tiny_model).fit(x[:200])
    assert detector.threshold is not None and float(detector.detect(x[:200]).double().mean()) <= 0.05
    metrics = detection_metrics(detector.score(x[200:]), detector.score(adversarial[200:]))
    assert metrics["auroc"] > 0.8 and metrics["tpr_at_fpr"] > 0.6, metrics
    assert metrics["fpr"] < 0.15  # on held-out clean images, close to the 5% it was set at
    with pytest.raises(InputError, match="call fit"):
        FeatureSqueezing(tiny_model).detect(x[:2])


def as_tensors_first(model: Classifier) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(8, *model.input_shape, generator=torch.Generator().manual_seed(3))
    return x, model.predict(x)


class Halve(Defense):
    """A user's own defense, for defense=custom."""

    name = "halve"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 2


def test_every_defense_config_builds_and_custom_ones_load_by_import_path() -> None:
    from omegaconf import OmegaConf

    import advsuite
    from advsuite.tasks.options import build_run_defense

    assert advsuite.defense_names("poison") == [
        "activation_clustering", "fine_pruning", "fine_tuning", "neural_cleanse", "spectral", "strip",
    ]  # fmt: skip
    assert advsuite.defense_names("evasion") == [
        "bit_depth", "chain", "custom", "gaussian_noise", "jpeg", "median", "none", "perturbation_grading",
        "random_resize_pad",
    ]  # fmt: skip
    assert advsuite.detector_names() == ["custom", "feature_squeezing", "none"]
    for name in advsuite.defense_names("evasion"):
        defense_cfg = OmegaConf.load(Path(__file__).parents[1] / f"conf/defense/{name}.yaml")
        cfg = OmegaConf.create({"seed": 0, "defense": defense_cfg})
        if name == "custom":
            cfg.defense.target = f"{__name__}:Halve"
        defense = build_run_defense(cfg, name)
        assert defense is None if name == "none" else isinstance(defense, Defense), name
    cfg = OmegaConf.create({"defense": OmegaConf.load(Path(__file__).parents[1] / "conf/defense/custom.yaml")})
    cfg.defense.target = "torch.nn:Identity"
    with pytest.raises(ConfigError, match="not an advsuite Defense"):
        build_run_defense(cfg, "custom")
    cfg.defense.target = "no_such_package.defenses:X"
    with pytest.raises(ConfigError, match=r"defense.target='no_such_package.defenses:X': cannot import"):
        build_run_defense(cfg, "custom")


class Brightness(Detector):
    """Scores an input by its mean intensity (a user's own detector, loaded by import path)."""

    def __init__(self, model: Classifier, scale: float = 1.0) -> None:
        self.model, self.scale = model, scale

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.flatten(1).mean(1)


def test_every_detector_config_builds_with_the_model_and_custom_ones_load_by_import_path(
    tiny_model: Classifier,
) -> None:
    from omegaconf import OmegaConf

    import advsuite
    from advsuite.tasks.options import build_run_detector

    def config(name: str) -> Any:
        return OmegaConf.create({"detector": OmegaConf.load(Path(__file__).parents[1] / f"conf/detector/{name}.yaml")})

    built = {}
    for name in advsuite.detector_names():
        cfg = config(name)
        if name == "custom":
            cfg.detector.target = f"{__name__}:Brightness"
            cfg.detector.kwargs = {"scale": 2.0}
        built[name] = build_run_detector(cfg, name)(tiny_model)
        assert built[name] is None if name == "none" else isinstance(built[name], Detector), name
    custom = built["custom"]
    assert isinstance(custom, Brightness) and custom.name == f"{__name__}:Brightness" and custom.scale == 2.0
    cfg = config("custom")
    cfg.detector.target = "torch.nn:Identity"
    with pytest.raises(ConfigError, match="not an advsuite Detector"):
        build_run_detector(cfg, "custom")(tiny_model)
    cfg = config("feature_squeezing")
    cfg.detector.bitz = 1
    with pytest.raises(ConfigError, match="detector feature_squeezing has no option 'bitz'") as typo:
        build_run_detector(cfg, "feature_squeezing")
    assert "model" not in str(typo.value).split("valid options:")[-1]  # the pipeline passes the model itself
    cfg = config("feature_squeezing")
    cfg.detector.fit_images = 0
    with pytest.raises(ConfigError, match="fit_images"):
        build_run_detector(cfg, "feature_squeezing")(tiny_model)


def test_the_detection_step_fits_on_training_images_and_scores_clean_against_successful_adversarials(
    tiny_model: Classifier, mnist: DataBundle
) -> None:
    detector = Brightness(tiny_model)
    detector.fit_images = 200
    x = torch.full((4, 1, 28, 28), 0.1)
    x_adv = torch.stack([torch.full((1, 28, 28), v) for v in (0.9, 0.05, 0.9, 0.9)])
    attacked = torch.tensor([True, True, True, False])
    success = torch.tensor([True, True, False, False])
    out = detection_step(detector, mnist.train, x, x_adv, attacked, success, seed=0)
    assert detector.threshold is not None and 0.05 < detector.threshold < 0.9  # set on real digits
    assert out["detector_fpr"] == 0.0 and out["detector_tpr"] == 0.5 and out["detector_auroc"] == 0.5
    assert out["undetected_success_rate"] == pytest.approx(1 / 3)  # image 1 fools the model, unflagged
