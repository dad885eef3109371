"""The name layer reads the spellings of the published rows, and says why when it cannot."""

from __future__ import annotations

import csv
from importlib.resources import files

import pytest

from edgeforge.estimator.names import mapping_report, normalise

ROWS = files("edgeforge.estimator") / "data" / "edge_benchmarks.csv"


def _rows() -> list[dict[str, str]]:
    with ROWS.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# (spelling as published, input column, precision column) -> (family, variant, zoo
# architecture, precision, input size)
SPELLINGS = [
    ("MobileNetV1_0.25_128", "", "", ("mobilenet_v1", "0.25", "mobilenet_v1", "fp32", (128, 128))),
    (
        "MobileNetV1_0.25_128_quant",
        "",
        "",
        ("mobilenet_v1", "0.25", "mobilenet_v1", "int8", (128, 128)),
    ),
    (
        "MobileNetV1_1.0_224_quant",
        "224x224x3",
        "int8",
        ("mobilenet_v1", "1.0", "mobilenet_v1", "int8", (224, 224)),
    ),
    (
        "MobileNetV1-0.25 (MLPerf Tiny VWW)",
        "96x96x3",
        "int8",
        ("mobilenet_v1", "0.25", "mobilenet_v1", "int8", (96, 96)),
    ),
    (
        "mobilenet_v2",
        "224x224x3",
        "fp16",
        ("mobilenet_v2", "1.0", "mobilenet_v2", "fp16", (224, 224)),
    ),
    ("mobilenet_int8", "", "", ("mobilenet_v1", "1.0", "mobilenet_v1", "int8", (224, 224))),
    ("MobileNet v1", "", "int8", ("mobilenet_v1", "1.0", "mobilenet_v1", "int8", (224, 224))),
    ("MobileNetV2-1.0", "", "", ("mobilenet_v2", "1.0", "mobilenet_v2", "fp32", (224, 224))),
    (
        "MobileNet [image_classification_mobilenetv2_2022apr_int8.onnx]",
        "224x224",
        "",
        ("mobilenet_v2", "1.0", "mobilenet_v2", "int8", (224, 224)),
    ),
    ("ResNet-50 V1", "", "", ("resnet", "50", "resnet50", "fp32", (224, 224))),
    ("ResNet-50 V2", "299x299x3", "", ("resnet_v2", "50", None, "fp32", (299, 299))),
    ("ResNet_V2_101", "", "", ("resnet_v2", "101", None, "fp32", (224, 224))),
    ("resnet50_int8", "224x224x3", "int8", ("resnet", "50", "resnet50", "int8", (224, 224))),
    ("ResNet-18", "256x256", "fp32", ("resnet", "18", "resnet18", "fp32", (256, 256))),
    ("ResNet-152", "", "", ("resnet", "152", None, "fp32", (224, 224))),
    (
        "PPResNet [image_classification_ppresnet50_2022jan_int8.onnx]",
        "",
        "",
        ("resnet", "50", "resnet50", "int8", (224, 224)),
    ),
    (
        "ResNet-8 (MLPerf Tiny IC, CIFAR-10)",
        "32x32x3",
        "int8",
        ("resnet_cifar", "8", None, "int8", (32, 32)),
    ),
    ("squeezenet", "227x227x3", "fp16", ("squeezenet", "1.1", "squeezenet1_1", "fp16", (227, 227))),
    ("SqueezeNet1.0", "", "", ("squeezenet", "1.0", None, "fp32", (227, 227))),
    ("squeezenet_ssd_int8", "300x300x3", "int8", ("ssd_squeezenet", "-", None, "int8", (300, 300))),
    ("googlenet_int8", "", "", ("inception_v1", "-", "googlenet", "int8", (224, 224))),
    ("Inception_V1_quant", "", "", ("inception_v1", "-", "googlenet", "int8", (224, 224))),
    ("Inception V4", "", "", ("inception_v4", "-", None, "fp32", (299, 299))),
    ("shufflenet_v2", "", "", ("shufflenet_v2", "1.0", "shufflenet_v2_x1_0", "fp32", (224, 224))),
    ("ShuffleNetV2-x0.5", "", "", ("shufflenet_v2", "0.5", None, "fp32", (224, 224))),
    ("MnasNet_1.3_224", "", "", ("mnasnet", "1.3", None, "fp32", (224, 224))),
    ("MnasNet_1.0_160", "", "", ("mnasnet", "1.0", None, "fp32", (160, 160))),
    ("VGG-13-BN", "", "", ("vgg", "13_bn", None, "fp32", (224, 224))),
    ("VGG-19 (vgg19_N2)", "", "", ("vgg", "19", None, "fp32", (224, 224))),
    ("yolov8n", "", "", ("yolov8", "n", None, "fp32", (640, 640))),
    ("YOLO11x", "640x640", "fp16", ("yolo11", "x", None, "fp16", (640, 640))),
    ("YOLOv7-tiny", "", "", ("yolov7", "tiny", None, "fp32", (640, 640))),
    ("YOLOX-S-Leaky", "", "", ("yolox", "s_leaky", None, "fp32", (640, 640))),
    (
        "YoloX [object_detection_yolox_2022nov_int8.onnx]",
        "",
        "",
        ("yolox", "s", None, "int8", (640, 640)),
    ),
    ("yolo-fastestv2", "", "", ("yolo_fastest", "v2", None, "fp32", (320, 320))),
    ("yolo-fastest-1.1", "", "", ("yolo_fastest", "1.1", None, "fp32", (320, 320))),
    ("nanodet_m", "", "", ("nanodet", "m", None, "fp32", (320, 320))),
    (
        "CRNN [text_recognition_CRNN_CH_2023feb_fp16.onnx]",
        "",
        "",
        ("crnn", "-", None, "fp16", (224, 224)),
    ),
    (
        "LPD_YuNet [license_plate_detection_lpd_yunet_2023mar.onnx]",
        "",
        "",
        ("lpd_yunet", "-", None, "fp32", (224, 224)),
    ),
    ("FastViT-SA12", "", "", ("fastvit", "sa12", None, "fp32", (224, 224))),
    ("efficientnet-lite0", "", "", ("efficientnet_lite", "0", None, "fp32", (224, 224))),
]


@pytest.mark.parametrize(("raw", "input_text", "precision", "expected"), SPELLINGS)
def test_published_spelling_maps_to_its_network(raw, input_text, precision, expected) -> None:
    name = normalise(raw, input_text, precision)
    assert name.reason is None, name.reason
    got = (name.family, name.variant, name.architecture, name.precision, name.input_size)
    assert got == expected


def test_a_narrower_mobilenet_is_the_zoo_factory_with_a_width() -> None:
    assert normalise("MobileNetV1_0.50_160_quant").zoo_options == {"width_mult": 0.5}
    assert normalise("MobileNetV1_1.0_160").zoo_options == {}


def test_input_size_says_where_it_came_from() -> None:
    assert normalise("MobileNetV1_0.75_192").input_source == "name"
    assert normalise("MobileNetV1_0.75_192", "160x160x3").input_source == "row"
    assert normalise("mobilenet_v2").input_source == "family default"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("DenseNet", "depth"),
        ("DeepLab V3", "backbone"),
        ("PP-PicoDet", "size"),
        ("UNet segmentation", "encoder"),
        ("WeChatQRCode [detect_2021nov.prototxt]", "pipeline"),
        ("my_custom_net", "no rule"),
    ],
)
def test_an_ambiguous_or_unknown_name_is_refused_with_a_reason(raw: str, why: str) -> None:
    name = normalise(raw)
    assert not name.mapped
    assert name.architecture is None and name.family is None
    assert why in (name.reason or "")


def test_at_least_seventy_percent_of_published_rows_map_and_misses_are_listed() -> None:
    rows = _rows()
    report = mapping_report(rows)
    assert report["rows"] == len(rows)
    assert report["names_mapped_share"] >= 0.70
    assert report["names_mapped"] + len(report["unmapped"]) == len(rows)
    assert all(entry["reason"] for entry in report["unmapped"])


def test_every_distinct_published_spelling_maps_or_says_why() -> None:
    for row in _rows():
        name = normalise(row["model"], row["input"], row["precision"])
        assert name.mapped or name.reason
        if name.mapped:
            assert name.precision in ("fp32", "fp16", "int8")
            assert name.input_size is not None


def test_mobilenet_v1_width_multiplier_matches_the_paper() -> None:
    torch = pytest.importorskip("torch")
    from edgeforge.zoo.mobilenet import mobilenet_v1

    # Howard et al. 2017, Table 6: width -> parameters (millions) at 224.
    for width, params_m in ((1.0, 4.2), (0.75, 2.6), (0.5, 1.3), (0.25, 0.5)):
        model = mobilenet_v1(width_mult=width)
        count = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        assert abs(count - params_m) / params_m < 0.07, (width, count)
    with torch.no_grad():
        assert mobilenet_v1(width_mult=0.25)(torch.zeros(1, 3, 96, 96)).shape == (1, 1000)
