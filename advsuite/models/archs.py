"""Architectures by name, adapted to a dataset's channels, classes and resolution.

Every builder returns ``(net, meta)``: ``net`` maps normalised (N, C, H, W) images to (N, classes) logits,
``meta`` records how the architecture was adapted (stem, head, patch size, ...). The zoo stores ``meta`` in
its cache metadata and hashes it into the cache key, so two adaptations never share cached weights.

Stem choice (see ``docs/models.md``): on a CPU the stem decides whether a deep network is usable at
28/32 px. The ImageNet stem (7x7/2 conv + 3x3/2 max-pool) downsamples by 4 and keeps resnet50 at
~14 s per epoch of 4,000 MNIST images; the CIFAR stem (3x3/1 conv, no pool) costs ~20x more. So
``stem="auto"`` picks the ImageNet stem from 16 px up and the CIFAR stem only below, where a 4x
downsampling would leave almost no spatial extent. Pass ``stem="cifar"`` for the layout of the CIFAR
robustness literature (on a GPU, or to load such checkpoints).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier

Meta = dict[str, Any]
BuildResult = tuple[nn.Module, Meta]
STEMS = ("auto", "imagenet", "cifar")
#: the smallest input for which ImageNet hub weights are accepted (they were trained at 224 px)
HUB_MIN_SIZE = 128


@dataclass(frozen=True)
class Arch:
    """A registry entry: the builder, and for archs with ImageNet weights the hub loader's name."""

    build: Callable[..., BuildResult]
    description: str
    #: ``"torchvision:<model>"`` or ``"timm:<model>"``; None when no pretrained weights exist
    hub: str | None = None


ARCHS: dict[str, Arch] = {}


def register(name: str, description: str, hub: str | None = None) -> Callable[[Callable[..., BuildResult]], Any]:
    """Decorator adding a builder to :data:`ARCHS` (the one place a new architecture is declared)."""

    def add(fn: Callable[..., BuildResult]) -> Callable[..., BuildResult]:
        ARCHS[name] = Arch(fn, description, hub)
        return fn

    return add


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ConfigError(f"unknown architecture {name!r}; valid architectures: {', '.join(sorted(ARCHS))}")
    return ARCHS[name]


def build_net(arch: str, *, in_chans: int, num_classes: int, image_size: Sequence[int], **kwargs: Any) -> BuildResult:
    """Build ``arch`` for (in_chans, H, W) inputs and ``num_classes`` outputs; bad kwargs raise ConfigError."""
    entry = get_arch(arch)
    size = (int(image_size[0]), int(image_size[1]))
    options = {
        name: p.default
        for name, p in inspect.signature(entry.build).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in ("in_chans", "num_classes", "image_size")
    }
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(f"unknown kwargs {unknown} for architecture {arch!r}; valid: {', '.join(sorted(options))}")
    options.update(kwargs)
    net, meta = entry.build(in_chans=int(in_chans), num_classes=int(num_classes), image_size=size, **options)
    # `kwargs` with the builder's defaults filled in: {} and {"stem": "auto"} are the same model
    return net, {"arch": arch, "kwargs": options, **meta}


def build_classifier(arch: str, data: Any, *, name: str | None = None, amp: bool = False, **kwargs: Any) -> Classifier:
    """Build ``arch`` for a :class:`~advsuite.data.DataBundle` and wrap it with the dataset's normalisation."""
    channels, height, width = data.input_shape
    net, meta = build_net(arch, in_chans=channels, num_classes=data.num_classes, image_size=(height, width), **kwargs)
    model = Classifier(
        net,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        mean=data.mean,
        std=data.std,
        name=name or arch,
        amp=amp,
    )
    model.info = {"arch": arch, "dataset": data.name, "adaptation": meta}
    return model


def resolve_stem(stem: str, image_size: tuple[int, int]) -> str:
    """``auto`` -> ``imagenet`` (cheap, 4x downsampling) from 16 px up, else ``cifar``."""
    if stem not in STEMS:
        raise ConfigError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
    if stem == "auto":
        return "imagenet" if min(image_size) >= 16 else "cifar"
    return stem


def _kaiming(module: nn.Module) -> nn.Module:
    """He initialisation for a replaced conv layer (as torchvision does for the ones it builds)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return module


# ----------------------------------------------------------------------------------------- small CNNs


@register("smallcnn", "MNIST-class CNN: 2 conv 5x5 (16, 32) with max-pool + 2 fc (128)")
def smallcnn(
    *,
    in_chans: int,
    num_classes: int,
    image_size: tuple[int, int],
    channels: Sequence[int] = (16, 32),
    hidden: int = 128,
) -> BuildResult:
    """LeNet-style: narrow 5x5 convolutions are ~3x cheaper to train on a CPU than 3x3 ones of 32/64 channels,
    and reach the same accuracy on MNIST (measured: docs/models.md)."""
    c1, c2 = (int(c) for c in channels)
    pooled = min(min(image_size) // 4, 8)  # 7x7 at 28 px, 8x8 at 32 px; bigger inputs are pooled down
    net = nn.Sequential(
        nn.Conv2d(in_chans, c1, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(pooled),
        nn.Flatten(),
        nn.Linear(c2 * pooled * pooled, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
    return net, {"channels": [c1, c2], "hidden": hidden}


@register("cifarcnn", "CIFAR-class CNN: 4 conv+BN blocks (64, 64, 128, 128) + 2 fc (256)")
def cifarcnn(*, in_chans: int, num_classes: int, image_size: tuple[int, int], hidden: int = 256) -> BuildResult:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    pooled = min(min(image_size) // 4, 8)
    net = nn.Sequential(
        *block(in_chans, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        *block(128, 128),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(pooled),
        nn.Flatten(),
        nn.Linear(128 * pooled * pooled, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
    return net, {"hidden": hidden}


@register("convnet", "VGG-style CNN: 4 conv+BN+pool blocks (32, 64, 128, 256), global max-pool, linear")
def convnet(
    *, in_chans: int, num_classes: int, image_size: tuple[int, int], widths: Sequence[int] = (32, 64, 128, 256)
) -> BuildResult:
    """Pooling after every block keeps it ~5x cheaper than cifarcnn per step on a CPU while reaching over 80%
    on CIFAR-10 in 15 epochs (docs/models.md); global max-pooling makes it work at any input size."""
    chans = [int(w) for w in widths]
    if not chans:
        raise ConfigError("convnet: widths must list at least one block width")
    layers: list[nn.Module] = []
    for cin, cout in zip([in_chans, *chans], chans, strict=False):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers.append(nn.MaxPool2d(2))
    net = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(chans[-1], num_classes))
    return net, {"widths": chans}


# ------------------------------------------------------------------------------------ torchvision ResNets


# zero_init_residual (Goyal et al. 2017, "Accurate, large minibatch SGD"): the last BN of each residual
# block starts at 0, so every block starts as the identity. Measured on mnist5k, resnet50 reaches 96.9% test
# accuracy after 4 epochs with it and 48% after 12 without: from scratch on small data it is what makes a
# 50-layer network train in a few hundred steps.
def _torchvision_resnet(
    name: str, *, in_chans: int, num_classes: int, image_size: tuple[int, int], stem: str, zero_init_residual: bool
) -> BuildResult:
    import torchvision

    chosen = resolve_stem(stem, image_size)
    net = getattr(torchvision.models, name)(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )
    if chosen == "cifar":
        net.conv1 = _kaiming(nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False))
        net.maxpool = nn.Identity()
    elif in_chans != 3:  # keep the 7x7/2 stem, only change its input channels
        net.conv1 = _kaiming(nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False))
    return net, {"stem": chosen, "source": f"torchvision.models.{name}", "zero_init_residual": zero_init_residual}


def _resnet_builder(name: str) -> Callable[..., BuildResult]:
    def build(
        *,
        in_chans: int,
        num_classes: int,
        image_size: tuple[int, int],
        stem: str = "auto",
        zero_init_residual: bool = True,
    ) -> BuildResult:
        return _torchvision_resnet(
            name,
            in_chans=in_chans,
            num_classes=num_classes,
            image_size=image_size,
            stem=stem,
            zero_init_residual=zero_init_residual,
        )

    return build


for _depth in ("resnet18", "resnet50"):
    register(_depth, f"torchvision ResNet-{_depth[6:]} (He et al. 2016)", hub=f"torchvision:{_depth}")(
        _resnet_builder(_depth)
    )


# ------------------------------------------------------------------------------------------------ VGG


@register("vgg16", "torchvision VGG-16-BN (Simonyan & Zisserman 2015)", hub="torchvision:vgg16_bn")
def vgg16(*, in_chans: int, num_classes: int, image_size: tuple[int, int], head: str = "auto") -> BuildResult:
    """VGG-16-BN: BN makes it trainable from scratch without the paper's staged initialisation.

    ``head="imagenet"`` keeps torchvision's 7x7 pool + 4096-4096 classifier (needed for hub weights);
    ``head="compact"`` (auto below 128 px) uses a global pool + one linear layer, the usual CIFAR VGG,
    and drops max-pools that would shrink the map below 1x1 (28 px keeps 4 of the 5 pools).
    """
    import torchvision

    if head not in ("auto", "imagenet", "compact"):
        raise ConfigError(f"vgg16 head must be auto, imagenet or compact, got {head!r}")
    chosen = head if head != "auto" else ("imagenet" if min(image_size) >= HUB_MIN_SIZE else "compact")
    net = torchvision.models.vgg16_bn(weights=None, num_classes=num_classes)
    if in_chans != 3:
        net.features[0] = _kaiming(nn.Conv2d(in_chans, 64, 3, padding=1))
    pools_kept = 5
    if chosen == "compact":
        size = min(image_size)
        for index, layer in enumerate(net.features):
            if isinstance(layer, nn.MaxPool2d):
                if size // 2 >= 1:
                    size //= 2
                else:  # pooling a 1x1 map would give an empty one
                    net.features[index] = nn.Identity()
                    pools_kept -= 1
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        net.classifier = nn.Linear(512, num_classes)
    return net, {"head": chosen, "pools": pools_kept, "source": "torchvision.models.vgg16_bn"}


# ------------------------------------------------------------------ pre-activation ResNet-18 and WRN


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    BN-ReLU-conv3x3-BN-ReLU-conv3x3 on the residual branch; the identity path is left untouched. When
    the shape changes, a 1x1 projection takes the *pre-activated* input, as in the paper's Fig. 4(e).
    ``dropout`` between the convolutions gives the wide-ResNet block (Zagoruyko & Komodakis 2016).
    """

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + skip


def _init_resnet(net: nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            _kaiming(module)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


class PreActResNet18(nn.Module):
    """PreAct-ResNet-18: a stem, four stages of two :class:`PreActBlock` (64-512 channels), BN-ReLU, pool, linear.

    Parameter names (conv1, layer1-4, bn, linear) follow the common CIFAR implementations, so their
    checkpoints load with ``stem="cifar"``.
    """

    def __init__(self, in_chans: int, num_classes: int, stem: str) -> None:
        super().__init__()
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
            self.stem_post: nn.Module = nn.Identity()
        else:  # the ImageNet stem of the paper: conv7x7/2-BN-ReLU-maxpool
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
            self.stem_post = nn.Sequential(nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        stages, cin = [], 64
        for width, stride in zip(widths, strides, strict=True):
            stages.append(nn.Sequential(PreActBlock(cin, width, stride), PreActBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)
        _init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem_post(self.conv1(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.relu(self.bn(out))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


@register("preactresnet18", "PreAct-ResNet-18 (He et al. 2016, identity mappings)")
def preactresnet18(*, in_chans: int, num_classes: int, image_size: tuple[int, int], stem: str = "auto") -> BuildResult:
    chosen = resolve_stem(stem, image_size)
    return PreActResNet18(in_chans, num_classes, chosen), {"stem": chosen, "source": "advsuite"}


class WideResNet(nn.Module):
    """WRN-depth-k for small images (Zagoruyko & Komodakis 2016): 3x3 stem, three stages of pre-activation blocks.

    ``depth = 6n + 4`` (n blocks per stage), widths 16k, 32k, 64k with strides 1, 2, 2.
    """

    def __init__(self, in_chans: int, num_classes: int, depth: int, widen_factor: int, dropout: float) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"wide_resnet depth must be 6n+4 (10, 16, 22, 28, 34, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        stages, cin = [], 16
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = [PreActBlock(cin if i == 0 else width, width, stride if i == 0 else 1, dropout) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)
        _init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = torch.relu(self.bn(out))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


@register("wide_resnet", "Wide ResNet WRN-d-k for small images (Zagoruyko & Komodakis 2016)")
def wide_resnet(
    *,
    in_chans: int,
    num_classes: int,
    image_size: tuple[int, int],
    depth: int = 16,
    widen_factor: int = 4,
    dropout: float = 0.0,
) -> BuildResult:
    net = WideResNet(in_chans, num_classes, int(depth), int(widen_factor), float(dropout))
    meta = {"depth": int(depth), "widen_factor": int(widen_factor), "dropout": float(dropout), "stem": "cifar"}
    return net, {**meta, "source": "advsuite"}


# ------------------------------------------------------------------------------------------------ ViT


@register("vit_tiny", "timm ViT-Ti (Dosovitskiy et al. 2021), patch size adapted", hub="timm:vit_tiny_patch16_224")
def vit_tiny(
    *,
    in_chans: int,
    num_classes: int,
    image_size: tuple[int, int],
    patch_size: int | None = None,
    pretrained: bool = False,
) -> BuildResult:
    """``patch_size`` defaults to 4 up to 64 px (7x7 tokens at 28 px, 8x8 at 32 px) and 16 above."""
    import timm

    patch = int(patch_size) if patch_size else (4 if min(image_size) <= 64 else 16)
    if image_size[0] % patch or image_size[1] % patch:
        raise ConfigError(f"vit_tiny: image size {image_size} is not divisible by patch_size={patch}; set model.kwargs")
    net = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=pretrained,
        num_classes=num_classes,
        img_size=image_size,
        patch_size=patch,
        in_chans=in_chans,
    )
    return net, {"patch_size": patch, "source": "timm:vit_tiny_patch16_224"}


# ------------------------------------------------------------------------------------------------ hub


def hub_net(
    arch: str, *, in_chans: int, num_classes: int, image_size: Sequence[int], verbose: bool = True, **kwargs: Any
) -> tuple[nn.Module, Meta, bool]:
    """``arch`` with ImageNet hub weights: ``(net, meta, head_reset)``; ``head_reset`` means it needs fine-tuning.

    Raises :class:`ConfigError` when ``arch`` has no hub weights or the data cannot use them, and lets
    download errors through (the zoo turns them into :class:`OfflineError`).
    """
    entry = get_arch(arch)
    if entry.hub is None:
        raise ConfigError(
            f"architecture {arch!r} has no hub weights (hub weights exist for "
            f"{', '.join(sorted(a for a, e in ARCHS.items() if e.hub))}); set model.hub=false to train it, "
            "or give model.checkpoint"
        )
    size = (int(image_size[0]), int(image_size[1]))
    if in_chans != 3 or min(size) < HUB_MIN_SIZE:
        raise ConfigError(
            f"hub weights for {arch!r} are ImageNet weights: they only make sense for 3-channel images of about "
            f"224x224 px (at least {HUB_MIN_SIZE} px), but this dataset has {in_chans}x{size[0]}x{size[1]} images; "
            "set model.hub=false to train on this dataset instead"
        )
    library, name = entry.hub.split(":")
    if library == "timm":
        net, meta = build_net(
            arch, in_chans=in_chans, num_classes=num_classes, image_size=size, pretrained=True, **kwargs
        )
        return net, {**meta, "hub": entry.hub}, num_classes != 1000
    import torchvision

    net, meta = build_net(arch, in_chans=in_chans, num_classes=num_classes, image_size=size, **kwargs)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    # torch.hub checks the cache under $TORCH_HOME first and only downloads on a miss
    state = torch.hub.load_state_dict_from_url(weights.url, progress=verbose, check_hash=True, map_location="cpu")
    head_reset = num_classes != 1000
    own = net.state_dict()
    # keep what fits: a new head (other class count) stays freshly initialised
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    left_out = sorted(k for k in own if k not in fitting and not (head_reset and k.startswith(("fc.", "classifier."))))
    if left_out:
        raise ConfigError(
            f"hub weights {weights} do not fit {arch} as built with {kwargs} (no weights for {left_out[:5]}); "
            "use the default model.kwargs with hub=true"
        )
    net.load_state_dict(fitting, strict=False)
    return net, {**meta, "hub": f"{entry.hub}:{weights}"}, head_reset
