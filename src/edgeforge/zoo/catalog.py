"""The zoo's registry: every reference architecture by name, with how to export it and the
published figures it must reproduce.

Invariants a caller can rely on:
- `build(name)` returns the same weights and the same example inputs every time (seeded,
  without touching the caller's random state), in eval mode;
- a name, or any of its aliases, resolves after case folding and with `_`, `-`, `.` and
  spaces ignored ("MobileNet-V2" is "mobilenet_v2"), and no two entries share a spelling;
- `macs` and `params` are figures from the cited source, for the example input size; the
  tests check that `edgeforge.inspect` reproduces them within 5%.

Each entry is also a factory for `edgeforge.load`: `edgeforge inspect
edgeforge.zoo.catalog:mobilenet_v2` exports MobileNetV2 with its names and dynamic axes.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeforge.errors import EdgeforgeError

# Modules under private names: the catalog's public names must stay free for the factories
# that `__getattr__` hands to `edgeforge.load` ("catalog:mobilenet_v2").
from edgeforge.zoo import detector as _detector
from edgeforge.zoo import efficientnet as _efficientnet
from edgeforge.zoo import googlenet as _googlenet
from edgeforge.zoo import mobilenet as _mobilenet
from edgeforge.zoo import recurrent as _recurrent
from edgeforge.zoo import resnet as _resnet
from edgeforge.zoo import shufflenet as _shufflenet
from edgeforge.zoo import squeezenet as _squeezenet
from edgeforge.zoo import transformer as _transformer
from edgeforge.zoo import vgg as _vgg

__all__ = ["ARCHITECTURES", "ZooEntry", "build", "lookup", "names"]

InputBuilder = Callable[[int, torch.Generator], Any]

_TORCHVISION = "torchvision model docs (GFLOPS column, which counts multiply-adds)"


@dataclass(frozen=True)
class ZooEntry:
    """One architecture: how to build it, export it, and what it should cost."""

    name: str
    factory: Callable[[], nn.Module]
    inputs: InputBuilder  # (batch, generator) -> example inputs
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]]
    macs: int | None  # published multiply-accumulates at the example input size
    params: int | None  # published parameter count (torch's, BatchNorm included)
    source: str  # where `macs` and `params` come from
    aliases: tuple[str, ...] = ()
    task: str = "image classification"
    notes: tuple[str, ...] = field(default_factory=tuple)
    # The batch to export with. torch.export treats a size of 1 as a constant wherever the
    # model branches on it (nn.LSTM and nn.GRU do), which would pin a dynamic batch to 1.
    export_batch: int = 1

    def example_inputs(self, batch: int | None = None, seed: int = 0) -> Any:
        """Inputs of the exported shape (batch `export_batch` unless given), the same for
        the same batch and seed."""
        batch = self.export_batch if batch is None else batch
        return self.inputs(batch, torch.Generator().manual_seed(seed))

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options for `edgeforge.load` and `edgeforge.inspect`."""
        return {
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
            "dynamic_axes": {k: dict(v) for k, v in self.dynamic_axes.items()},
        }


# -- example inputs --------------------------------------------------------------------------


def _image(size: int) -> InputBuilder:
    return lambda batch, generator: torch.randn(batch, 3, size, size, generator=generator)


def _unit_image(size: int) -> InputBuilder:
    return lambda batch, generator: torch.rand(batch, 3, size, size, generator=generator)


def _token_ids(vocab: int, seq: int) -> InputBuilder:
    return lambda batch, generator: torch.randint(0, vocab, (batch, seq), generator=generator)


def _frames(time: int, features: int) -> InputBuilder:
    return lambda batch, generator: torch.randn(batch, time, features, generator=generator)


# -- the entries -------------------------------------------------------------------------------

_BATCH = {"image": {0: "batch"}}
_LOGITS = ("logits",)
_SEQ = 128  # the sequence length `inspect` assumes for a dynamic axis
_FRAMES, _FEATURES = 16, 40


def _classifier(
    name: str,
    factory: Callable[[], nn.Module],
    macs: float,
    params: float,
    source: str,
    aliases: tuple[str, ...],
    size: int = 224,
) -> ZooEntry:
    return ZooEntry(
        name=name,
        factory=factory,
        inputs=_image(size),
        input_names=("image",),
        output_names=_LOGITS,
        dynamic_axes=_BATCH,
        macs=int(macs),
        params=int(params),
        source=source,
        aliases=aliases,
    )


_ENTRIES = [
    _classifier(
        "mobilenet_v1",
        _mobilenet.mobilenet_v1,
        569e6,
        4.2e6,
        "Howard et al. 2017, MobileNets, Table 8: 1.0 MobileNet-224, 569 M mult-adds, 4.2 M",
        ("mobilenetv1", "mobilenet_v1_1.0_224", "mobilenet_v1_1.0"),
    ),
    _classifier(
        "mobilenet_v2",
        _mobilenet.mobilenet_v2,
        300e6,
        3_504_872,
        "Sandler et al. 2018, MobileNetV2, Table 4: 300 M MAdds; params: " + _TORCHVISION,
        ("mobilenetv2", "mobilenet_v2_1.0_224", "mobilenet_v2_1.0"),
    ),
    _classifier(
        "mobilenet_v3_large",
        _mobilenet.mobilenet_v3_large,
        219e6,
        5_483_032,
        "Howard et al. 2019, MobileNetV3, Table 3: 219 M MAdds, 5.4 M; params: " + _TORCHVISION,
        (
            "mobilenetv3",
            "mobilenet_v3",
            "mobilenetv3_large",
            "mobilenet_v3_large_1.0_224",
            "mobilenetv3_large_100",
        ),
    ),
    _classifier(
        "mobilenet_v3_small",
        _mobilenet.mobilenet_v3_small,
        56e6,
        2_542_856,
        "Howard et al. 2019, MobileNetV3, Table 4: 56 M MAdds; params: " + _TORCHVISION,
        ("mobilenetv3_small", "mobilenet_v3_small_1.0_224", "mobilenetv3_small_100"),
    ),
    _classifier(
        "efficientnet_b0",
        _efficientnet.efficientnet_b0,
        390e6,
        5_288_548,
        "Tan & Le 2019, EfficientNet, Table 2: B0 0.39 B FLOPs (multiply-adds), 5.3 M; "
        "params: " + _TORCHVISION,
        ("efficientnetb0", "efficientnet"),
    ),
    _classifier(
        "squeezenet1_1",
        _squeezenet.squeezenet1_1,
        350e6,
        1_235_496,
        "torchvision squeezenet1_1: 0.35 GFLOPS, 1,235,496 params",
        ("squeezenet", "squeezenet_1.1", "squeezenet_v1.1"),
    ),
    _classifier(
        "shufflenet_v2_x1_0",
        _shufflenet.shufflenet_v2_x1_0,
        146e6,
        2_278_604,
        "Ma et al. 2018, ShuffleNet V2, Table 5: 1.0x 146 M FLOPs (multiply-adds), 2.3 M; "
        "params: " + _TORCHVISION,
        ("shufflenet_v2", "shufflenetv2", "shufflenet_v2_1.0", "shufflenet_v2_x1.0"),
    ),
    _classifier(
        "googlenet",
        _googlenet.googlenet,
        1.5e9,
        6_624_904,
        "Szegedy et al. 2014, Going deeper with convolutions: 1.5 B multiply-adds; params: "
        "torchvision googlenet without auxiliary heads, 6,624,904",
        ("inception_v1", "inceptionv1"),
    ),
    _classifier(
        "vgg16",
        _vgg.vgg16,
        15.47e9,
        138_357_544,
        "torchvision vgg16: 15.47 GFLOPS, 138,357,544 params (Simonyan & Zisserman 2014: 138 M)",
        ("vgg_16",),
    ),
    _classifier(
        "resnet18",
        _resnet.resnet18,
        1.81e9,
        11_689_512,
        "torchvision resnet18: 1.81 GFLOPS, 11,689,512 params (He et al. 2015: 1.8 G FLOPs)",
        ("resnet_18",),
    ),
    _classifier(
        "resnet50",
        _resnet.resnet50,
        4.09e9,
        25_557_032,
        "torchvision resnet50 (v1.5 strides): 4.09 GFLOPS, 25,557,032 params",
        ("resnet_50", "resnet50_v1.5"),
    ),
    ZooEntry(
        name="transformer_encoder",
        factory=_transformer.transformer_encoder,
        inputs=_token_ids(1000, _SEQ),
        input_names=("input_ids",),
        output_names=_LOGITS,
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}},
        macs=_transformer.transformer_encoder_macs(_SEQ),
        params=None,
        source=f"analytic: 2 post-norm layers, d_model 128, feed-forward 512, sequence {_SEQ}",
        aliases=("transformer", "transformer_classifier"),
        task="text classification",
    ),
    ZooEntry(
        name="lstm_classifier",
        factory=_recurrent.lstm_classifier,
        inputs=_frames(_FRAMES, _FEATURES),
        input_names=("frames",),
        output_names=_LOGITS,
        dynamic_axes={"frames": {0: "batch"}},
        macs=_recurrent.recurrent_macs("lstm", _FRAMES),
        params=None,
        source=f"analytic: 2 layers of 128, {_FEATURES} features, {_FRAMES} frames",
        aliases=("lstm",),
        task="sequence classification",
        export_batch=2,
        notes=(
            "The time axis is fixed: with it dynamic, torch 2.13's dynamo exporter "
            "specialises it on a second export of the same shape in one process and "
            "edgeforge falls back to the TorchScript exporter.",
        ),
    ),
    ZooEntry(
        name="gru_classifier",
        factory=_recurrent.gru_classifier,
        inputs=_frames(_FRAMES, _FEATURES),
        input_names=("frames",),
        output_names=_LOGITS,
        dynamic_axes={"frames": {0: "batch"}},
        macs=_recurrent.recurrent_macs("gru", _FRAMES),
        params=None,
        source=f"analytic: 2 layers of 128, {_FEATURES} features, {_FRAMES} frames",
        aliases=("gru",),
        task="sequence classification",
        export_batch=2,
        notes=("The time axis is fixed, as for lstm_classifier.",),
    ),
    ZooEntry(
        name="tiny_detector",
        factory=_detector.tiny_detector,
        inputs=_unit_image(320),
        input_names=("image",),
        output_names=("boxes", "scores", "labels", "num_detections"),
        dynamic_axes=_BATCH,
        macs=None,
        params=None,
        source="no published figure: a reference for detection post-processing ops",
        aliases=("detector",),
        task="object detection",
        notes=(
            "Outputs are ranked detections: runtimes that differ by float rounding can swap "
            "near-equal scores, so compare detections as sets, not slot by slot.",
        ),
    ),
]

ARCHITECTURES: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}


def _spelling(name: str) -> str:
    return re.sub(r"[\s_.\-]", "", name.lower())


def _index() -> dict[str, str]:
    index: dict[str, str] = {}
    for entry in ARCHITECTURES.values():
        for spelling in {_spelling(n) for n in (entry.name, *entry.aliases)}:
            if index.setdefault(spelling, entry.name) != entry.name:
                raise RuntimeError(f"{spelling!r} names both {index[spelling]} and {entry.name}")
    return index


_SPELLINGS = _index()


def names() -> list[str]:
    """The canonical names, in catalog order."""
    return list(ARCHITECTURES)


def lookup(name: str) -> ZooEntry:
    """The entry for a name or alias; `EdgeforgeError` naming close matches otherwise."""
    canonical = _SPELLINGS.get(_spelling(name))
    if canonical is None:
        close = difflib.get_close_matches(_spelling(name), list(_SPELLINGS), n=3)
        hint = f"; did you mean {', '.join(_SPELLINGS[c] for c in close)}?" if close else ""
        raise EdgeforgeError(
            f"no zoo architecture named {name!r}{hint} (known: {', '.join(ARCHITECTURES)})"
        )
    return ARCHITECTURES[canonical]


def build(
    name: str, batch: int | None = None, seed: int = 0
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """`(module, example_inputs, options)` for `name`, the shape a factory for
    `edgeforge.load` returns; the module is in eval mode with seeded random weights, the
    inputs have the entry's `export_batch` unless `batch` is given."""
    entry = lookup(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = entry.factory().eval()
    return module, entry.example_inputs(batch, seed), entry.options


def __getattr__(attribute: str) -> Callable[[], tuple[nn.Module, Any, dict[str, Any]]]:
    # `edgeforge.load("edgeforge.zoo.catalog:mobilenet_v2")` looks the factory up by name.
    if attribute.startswith("_") or _spelling(attribute) not in _SPELLINGS:
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    canonical = _SPELLINGS[_spelling(attribute)]

    def factory() -> tuple[nn.Module, Any, dict[str, Any]]:
        return build(canonical)

    factory.__name__ = factory.__qualname__ = canonical
    return factory
