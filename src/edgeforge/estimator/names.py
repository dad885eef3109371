"""Model names as published tables write them, mapped to an architecture, input size and precision.

Published tables spell one network many ways (`MobileNetV1_0.25_128_quant`, `mobilenet_v2`,
`MobileNet [image_classification_mobilenetv2_2022apr_int8.onnx]`, `ResNet-50 V1`, `YOLO11n`).
`normalise` reads such a name (with the row's input and precision columns when given) into a
`ModelName`: a `family` (`mobilenet_v1`, `resnet`, `yolo11`, ...), the `variant` that fixes the
network within it (depth, size letter or width), the input size and the precision. Invariants:

- A name maps (`reason is None`) only when it identifies one network: a family with a known
  variant. "DenseNet" (which depth?) or "DeepLab V3" (which backbone?) do not map; `reason`
  says what is missing. Nothing is guessed from a device or runtime.
- `architecture` is the zoo architecture that builds this network (`zoo.catalog` name) with
  `zoo_options` passed to its factory (a MobileNet width other than 1.0 is `{"width_mult":
  0.25}`; empty for the catalogue entry as is), or None when the zoo has no such network yet. A
  mapped name without an architecture is a known network the zoo lacks, not a failure to read
  the name.
- Precision comes from the name first (`_int8`, `_quant`, `_fp16`, the file name inside
  `[...]`), then the row's precision column, else "fp32".
- Input size comes from the row's input column when it states one, else from the name
  (`MobileNetV1_0.25_128` is 128x128), else the family's usual size; `input_source` says which.
- Reading is pure string work: no torch, no file access.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeforge.estimator.published import parse_input

__all__ = ["ModelName", "mapping_report", "normalise"]

# (family, variant) -> zoo architecture. Only networks the zoo builds as published.
_ZOO: Mapping[tuple[str, str], str] = {
    ("mobilenet_v1", "1.0"): "mobilenet_v1",
    ("mobilenet_v2", "1.0"): "mobilenet_v2",
    ("mobilenet_v3", "large_1.0"): "mobilenet_v3_large",
    ("mobilenet_v3", "small_1.0"): "mobilenet_v3_small",
    ("efficientnet", "b0"): "efficientnet_b0",
    ("squeezenet", "1.1"): "squeezenet1_1",
    ("shufflenet_v2", "1.0"): "shufflenet_v2_x1_0",
    ("inception_v1", "-"): "googlenet",
    ("vgg", "16"): "vgg16",
    ("resnet", "18"): "resnet18",
    ("resnet", "50"): "resnet50",
}
# Zoo factories that take the family's width as a parameter (`width_mult`).
_WIDTH_PARAMETER = frozenset({"mobilenet_v1", "mobilenet_v2"})

# The usual input size of a family (height = width), used when neither the row nor the name
# says. Families absent here default to 224.
_DEFAULT_SIZE: Mapping[str, int] = {
    "squeezenet": 227,
    "alexnet": 227,
    "inception_v3": 299,
    "inception_v4": 299,
    "inception_resnet_v2": 299,
    "yolo_fastest": 320,
    "nanodet": 320,
    "yolo11": 640,
    "yolov8": 640,
    "yolov10": 640,
    "yolov7": 640,
    "yolov4": 416,
    "yolox": 640,
    "resnet_cifar": 32,
}


@dataclass(frozen=True)
class ModelName:
    """What a published model name means; `reason` is None when it names one network."""

    raw: str
    family: str | None
    variant: str | None
    architecture: str | None
    precision: str
    input_size: tuple[int, int] | None
    input_source: str  # "row", "name", "family default" or "unknown"
    task: str | None = None
    zoo_options: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None

    @property
    def mapped(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["zoo_options"] = dict(self.zoo_options)
        return data


# -- precision --------------------------------------------------------------------------------

_PRECISION_WORDS = (
    (re.compile(r"(?:^|[_\-\s.])(int8|uint8|quant|quantized|qat)(?=$|[_\-\s.\]])", re.I), "int8"),
    (re.compile(r"(?:^|[_\-\s.])(fp16|half)(?=$|[_\-\s.\]])", re.I), "fp16"),
    (re.compile(r"(?:^|[_\-\s.])(fp32|float)(?=$|[_\-\s.\]])", re.I), "fp32"),
)


def _precision_of(text: str) -> str | None:
    for pattern, precision in _PRECISION_WORDS:
        if pattern.search(text):
            return precision
    return None


def _strip_precision(text: str) -> str:
    for pattern, _ in _PRECISION_WORDS:
        text = pattern.sub("", text)
    return text


# -- the family rules --------------------------------------------------------------------------
# Each rule reads a cleaned name (lower case, brackets removed, precision words dropped) and
# returns (family, variant, size from the name, task) or None. The first rule that matches wins.

_Rule = tuple[re.Pattern[str], Any]
_NUM = r"(\d+(?:\.\d+)?)"


def _width(text: str | None, default: str = "1.0") -> str:
    if not text:
        return default
    value = float(text)
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"


def _mobilenet(match: re.Match[str]) -> tuple[str, str | None, int | None, str]:
    version = match.group("v")
    rest = match.group("rest") or ""
    numbers = re.findall(r"\d+(?:\.\d+)?", rest)
    width, size = None, None
    for number in numbers:
        value = float(number)
        if value <= 2.0 and width is None:
            width = number
        elif value >= 32 and size is None:
            size = int(value)
    if version == "3":
        kind = "small" if "small" in rest else "large" if "large" in rest else None
        if kind is None:
            return "mobilenet_v3", None, size, "image classification"
        return "mobilenet_v3", f"{kind}_{_width(width)}", size, "image classification"
    return f"mobilenet_v{version}", _width(width), size, "image classification"


_CLS = "image classification"
_DET = "object detection"
_SEG = "segmentation"

_RULES: list[tuple[re.Pattern[str], Any]] = [
    # Detectors and composites first: "squeezenet_ssd" is an SSD, not a SqueezeNet.
    (re.compile(r"^squeezenet[\s_\-]*ssd$"), ("ssd_squeezenet", "-", None, _DET)),
    (
        re.compile(r"^mobilenet[\s_\-]*v?2?[\s_\-]*ssd(lite)?$"),
        ("ssd_mobilenet_v2", "-", None, _DET),
    ),
    (
        re.compile(r"^ssd[\s_\-]*mobilenet[\s_\-]*v?(\d)"),
        lambda m: (f"ssd_mobilenet_v{m.group(1)}", "-", None, _DET),
    ),
    (re.compile(r"^mobilenet[\s_\-]*yolo(v2)?$"), ("yolov2_mobilenet", "-", None, _DET)),
    (
        re.compile(r"^yolo[\s_\-]*fastest[\s_\-]*(v?2|1\.1)?$"),
        lambda m: ("yolo_fastest", "v2" if m.group(1) and "2" in m.group(1) else "1.1", None, _DET),
    ),
    (re.compile(r"^fastestdet$"), ("fastestdet", "-", None, _DET)),
    (
        re.compile(r"^nanodet(?:[\s_\-]*(m|plus|t))?$"),
        lambda m: ("nanodet", m.group(1) or "m", None, _DET),
    ),
    (
        re.compile(r"^pp[\s_\-]*picodet(?:[\s_\-]*(s|m|l|xs))?$"),
        lambda m: ("pp_picodet", m.group(1), None, _DET),
    ),
    (
        re.compile(r"^yolox[\s_\-]*(nano|tiny|s|m|l|x)([\s_\-]*leaky)?$"),
        lambda m: ("yolox", m.group(1) + ("_leaky" if m.group(2) else ""), None, _DET),
    ),
    (re.compile(r"^yolox$"), ("yolox", None, None, _DET)),
    (
        re.compile(r"^yolo[\s_\-]*v?(11|10|9|8|5)[\s_\-]*(n|s|m|l|x)$"),
        lambda m: (f"yolo{'' if m.group(1) == '11' else 'v'}{m.group(1)}", m.group(2), None, _DET),
    ),
    (
        re.compile(r"^yolo[\s_\-]*v?(7|4|3)(?:[\s_\-]*(tiny))?$"),
        lambda m: (f"yolov{m.group(1)}", m.group(2) or "full", None, _DET),
    ),
    (
        re.compile(r"^(lpd[\s_\-]*)?yunet$"),
        lambda m: ("lpd_yunet" if m.group(1) else "yunet", "-", None, _DET),
    ),
    (re.compile(r"^blazeface$"), ("blazeface", "-", None, _DET)),
    (
        re.compile(r"^mppalmdet$|^palm[\s_]*detection"),
        ("mediapipe_palm_detection", "-", None, _DET),
    ),
    (re.compile(r"^mphandpose$"), ("mediapipe_handpose", "-", None, "pose estimation")),
    (re.compile(r"^mppose$"), ("mediapipe_pose", "-", None, "pose estimation")),
    (
        re.compile(r"^ppocrdet$|^pp[\s_\-]*ocr[\s_\-]*v?3?[\s_\-]*det$"),
        ("ppocr_det", "v3", None, "text detection"),
    ),
    (re.compile(r"^crnn$"), ("crnn", "-", None, "text recognition")),
    (re.compile(r"^sface$"), ("sface", "-", None, "face recognition")),
    (re.compile(r"^facialexpressionrecog$"), ("mobilefacenet_fer", "-", None, _CLS)),
    (re.compile(r"^ppresnet$"), ("resnet", "50", None, _CLS)),
    (re.compile(r"^unet[\s_\-]*mobilenet[\s_\-]*v?2$"), ("unet_mobilenet_v2", "-", None, _SEG)),
    # Classifiers.
    (re.compile(r"^resnet[\s_\-]*8\b.*mlperf|^resnet[\s_\-]*8$"), ("resnet_cifar", "8", 32, _CLS)),
    (re.compile(r"^mobilenet[\s_\-]*v?(?P<v>[123])(?P<rest>.*)$"), _mobilenet),
    # A bare "mobilenet" (ncnn's benchmark, TFLite's "mobilenet_int8") is V1 at width 1.0.
    (re.compile(r"^mobilenet$"), ("mobilenet_v1", "1.0", None, _CLS)),
    (
        re.compile(r"^mnasnet(?:[\s_\-]*" + _NUM + r")?(?:[\s_\-]+(\d+))?$"),
        lambda m: ("mnasnet", _width(m.group(1)), int(m.group(2)) if m.group(2) else None, _CLS),
    ),
    (
        re.compile(r"^proxyless[\s_\-]*nas(?:net)?(?:[\s_\-]*mobile)?$"),
        ("proxylessnas_mobile", "-", None, _CLS),
    ),
    (
        re.compile(r"^shufflenet[\s_\-]*v?2(?:[\s_\-]*x?" + _NUM + r")?$"),
        lambda m: ("shufflenet_v2", _width(m.group(1)), None, _CLS),
    ),
    (re.compile(r"^shufflenet[\s_\-]*v?1?$"), ("shufflenet_v1", "g3_1.0", None, _CLS)),
    (
        re.compile(r"^squeezenet[\s_\-]*v?(1[\s_.\-]?[01])?$"),
        lambda m: (
            "squeezenet",
            "1.0" if m.group(1) and m.group(1)[-1] == "0" else "1.1",
            None,
            _CLS,
        ),
    ),
    (re.compile(r"^(googlenet|inception[\s_\-]*v?1)$"), ("inception_v1", "-", None, _CLS)),
    (
        re.compile(r"^inception[\s_\-]*v?([234])$"),
        lambda m: (f"inception_v{m.group(1)}", "-", None, _CLS),
    ),
    (re.compile(r"^inception[\s_\-]*resnet[\s_\-]*v?2$"), ("inception_resnet_v2", "-", None, _CLS)),
    (re.compile(r"^alexnet$"), ("alexnet", "-", None, _CLS)),
    (
        re.compile(
            r"^resnet[\s_\-]*v?([12])?[\s_\-]*(18|34|50|101|152)(?:[\s_\-]*v?([12])(?:\.5)?)?$"
        ),
        lambda m: (
            "resnet" if (m.group(1) or m.group(3) or "1") == "1" else "resnet_v2",
            m.group(2),
            None,
            _CLS,
        ),
    ),
    (
        re.compile(r"^resnet[\s_\-]*(18|34|50|101|152)$"),
        lambda m: ("resnet", m.group(1), None, _CLS),
    ),
    (
        re.compile(
            r"^vgg[\s_\-]*(11|13|16|19)(?:[\s_\-]*(bn))?(?:[\s_\-]*\(?vgg\d+[\s_\-]*n\d\)?)?$"
        ),
        lambda m: ("vgg", m.group(1) + ("_bn" if m.group(2) else ""), None, _CLS),
    ),
    (
        re.compile(r"^efficientnet[\s_\-]*(lite|edgetpu)?[\s_\-]*(b\d|[0-4]|s|m|l)$"),
        lambda m: (
            "efficientnet" + (f"_{m.group(1)}" if m.group(1) else ""),
            m.group(2),
            None,
            _CLS,
        ),
    ),
    (
        re.compile(r"^densenet[\s_\-]*(121|161|169|201)$"),
        lambda m: ("densenet", m.group(1), None, _CLS),
    ),
    (re.compile(r"^mobileone[\s_\-]*(s[0-4])$"), lambda m: ("mobileone", m.group(1), None, _CLS)),
    (
        re.compile(r"^fastvit[\s_\-]*(t8|t12|s12|sa12|sa24|sa36|ma36)$"),
        lambda m: ("fastvit", m.group(1), None, _CLS),
    ),
    (
        re.compile(r"^regnet[\s_\-]*([xy][\s_\-]*\d+(?:\.\d+)?[gm]f)$"),
        lambda m: ("regnet", m.group(1), None, _CLS),
    ),
    (re.compile(r"^ds[\s_\-]*cnn"), ("ds_cnn", "-", None, "keyword spotting")),
]

# Families known but not identified by the name alone: the reason says what is missing.
_AMBIGUOUS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^densenet$"), "DenseNet without a depth (121/169/201?)"),
    (re.compile(r"^deeplab"), "DeepLab V3 without its backbone"),
    (re.compile(r"^unet(\s|_|-)*segmentation$|^unet$"), "UNet without its encoder or width"),
    (re.compile(r"^pp[\s_\-]*picodet$"), "PP-PicoDet without its size (xs/s/m/l)"),
    (re.compile(r"openpose"), "an 'OpenPose-style' network is not one architecture"),
    (re.compile(r"^wechatqrcode"), "WeChat QR code is a detector + super-resolution pipeline"),
    (re.compile(r"^yolox$"), "YOLOX without its size"),
]


def _clean(raw: str) -> tuple[str, str]:
    """(cleaned name, the text inside [...] or '')."""
    inside = " ".join(re.findall(r"\[([^\]]*)\]", raw))
    text = re.sub(r"\[[^\]]*\]", " ", raw)
    # Context in parentheses ("(MLPerf Tiny VWW)", "(vgg19_N2)") says where a row is from; the
    # MLPerf Tiny ResNet-8 needs it, the rest does not.
    mlperf = "mlperf" if re.search(r"mlperf", text, re.I) else ""
    text = re.sub(r"\([^)]*\)", " ", text)
    text = _strip_precision(text.strip())
    text = re.sub(r"\s+", " ", text).strip().lower()
    text = re.sub(r"[\s_\-]+v(\d)\b", r" v\1", text)
    if mlperf and text.startswith("resnet"):
        text = f"{text} mlperf"
    return text, inside


def _from_file(inside: str) -> str | None:
    """The family word of an OpenCV Zoo file name (`image_classification_mobilenetv2_...`)."""
    stem = inside.lower()
    for pattern, name in (
        (r"mobilenetv(\d)", r"mobilenet v\1"),
        (r"ppresnet50", "resnet 50"),
        (r"yolox", "yolox s"),
        (r"nanodet", "nanodet plus"),
    ):
        found = re.search(pattern, stem)
        if found:
            return re.sub(pattern, name, found.group(0))
    return None


def normalise(model: str, input_text: str = "", precision: str = "") -> ModelName:
    """Read one published model name; `input_text` and `precision` are the row's columns."""
    raw = model.strip()
    cleaned, inside = _clean(raw)
    named_precision = _precision_of(raw)
    column = precision.strip().lower()
    resolved_precision = named_precision or (
        column if column in ("fp32", "fp16", "int8") else "fp32"
    )
    row_size = parse_input(input_text) if input_text else None

    candidates = [cleaned]
    from_file = _from_file(inside) if inside else None
    if from_file:
        # OpenCV Zoo: "MobileNet [image_classification_mobilenetv2_...]" is V2, "YoloX [...]" is
        # YOLOX-S, "NanoDet [...]" is NanoDet-Plus-m (their model cards).
        candidates.insert(0, from_file)
    for text in candidates:
        for pattern, action in _RULES:
            match = pattern.search(text)
            if not match:
                continue
            family, variant, name_size, task = action(match) if callable(action) else action
            if variant is None:
                break  # known family, variant not stated: fall through to the ambiguity check
            return _result(raw, family, variant, name_size, task, resolved_precision, row_size)
    for pattern, why in _AMBIGUOUS:
        if pattern.search(cleaned):
            return _unmapped(raw, resolved_precision, row_size, f"ambiguous: {why}")
    return _unmapped(
        raw, resolved_precision, row_size, f"no rule reads {raw!r} as a known architecture"
    )


def _result(
    raw: str,
    family: str,
    variant: str,
    name_size: int | None,
    task: str,
    precision: str,
    row_size: tuple[int, int] | None,
) -> ModelName:
    if row_size is not None:
        size, source = row_size, "row"
    elif name_size is not None:
        size, source = (name_size, name_size), "name"
    else:
        default = _DEFAULT_SIZE.get(family, 224)
        size, source = (default, default), "family default"
    architecture = _ZOO.get((family, variant))
    options: dict[str, Any] = {}
    if architecture is None and family in _WIDTH_PARAMETER:
        # Another width of a zoo MobileNet: the same factory with `width_mult`.
        architecture = _ZOO[(family, "1.0")]
        options = {"width_mult": float(variant)}
    return ModelName(
        raw=raw,
        family=family,
        variant=variant,
        architecture=architecture,
        precision=precision,
        input_size=size,
        input_source=source,
        task=task,
        zoo_options=options,
    )


def _unmapped(raw: str, precision: str, row_size: tuple[int, int] | None, reason: str) -> ModelName:
    return ModelName(
        raw=raw,
        family=None,
        variant=None,
        architecture=None,
        precision=precision,
        input_size=row_size,
        input_source="row" if row_size else "unknown",
        reason=reason,
    )


def mapping_report(rows: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """Map the `model` of every row (dicts with `model`, `input`, `precision`, and `device`).

    Returns the share of rows whose name maps, the share whose network the zoo builds, the
    families the zoo lacks by row count, and every unmapped row with its reason.
    """
    total = mapped = in_zoo = 0
    missing: Counter[str] = Counter()
    unmapped: list[dict[str, Any]] = []
    for line, row in enumerate(rows, start=2):
        total += 1
        name = normalise(row.get("model", ""), row.get("input", ""), row.get("precision", ""))
        if not name.mapped:
            unmapped.append(
                {
                    "line": line,
                    "model": name.raw,
                    "device": row.get("device"),
                    "reason": name.reason,
                }
            )
            continue
        mapped += 1
        if name.architecture is not None:
            in_zoo += 1
        else:
            missing[f"{name.family}:{name.variant}"] += 1
    return {
        "rows": total,
        "names_mapped": mapped,
        "names_mapped_share": round(mapped / total, 4) if total else None,
        "zoo_built": in_zoo,
        "zoo_built_share": round(in_zoo / total, 4) if total else None,
        "networks_the_zoo_lacks": dict(missing.most_common()),
        "unmapped": unmapped,
    }
