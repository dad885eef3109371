"""The zoo: layouts faithful to their papers (published MACs and parameters reproduced),
exports that ONNX Runtime runs like torch, the catalog's names, and pip-shipped models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import edgeforge
from edgeforge._torch_export import load_factory
from edgeforge.estimator import _zoo_snapshot
from edgeforge.zoo import catalog
from edgeforge.zoo.packaged import PackagedSource, packaged_onnx_models


def _profile(name: str, workdir: Path) -> edgeforge.Profile:
    module, inputs, options = catalog.build(name)
    return edgeforge.inspect(module, inputs, **options, workdir=workdir)


def _op_types(profile: edgeforge.Profile) -> set[str]:
    return {row["op_type"] for row in profile.op_census}


# -- CNNs: published figures -------------------------------------------------------------------

_CNNS = [
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "squeezenet1_1",
    "shufflenet_v2_x1_0",
    "resnet18",
    "googlenet",  # shipped: its snapshot is checked (no build here)
    pytest.param("vgg16", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", _CNNS)
def test_cnn_reproduces_its_published_macs_and_parameters(name, tmp_path):
    """Where the package ships a snapshot of the architecture's profile, that snapshot is
    checked: `tests/test_packaging.py::test_zoo_snapshots_equal_what_torch_builds` builds every
    snapshotted architecture afresh in torch and compares its whole profile (MACs, parameters,
    exporter, inputs, outputs, what was not counted) with it, so a second build here would
    prove nothing more. The others are built here."""
    entry = catalog.lookup(name)
    shipped = _zoo_snapshot.load()
    profile = shipped[name] if name in shipped else _profile(name, tmp_path)
    assert profile.macs == pytest.approx(entry.macs, rel=0.05), entry.source
    assert profile.weights["torch_parameters"] == pytest.approx(entry.params, rel=0.05)
    assert profile.not_counted == []
    assert profile.model["provenance"]["exporter"] == "torch.onnx dynamo"
    assert profile.inputs == [
        {"name": "image", "dtype": "float32", "shape": ["batch", 3, 224, 224]}
    ]
    assert profile.outputs == [{"name": "logits", "dtype": "float32", "shape": ["batch", 1000]}]


def test_resnet50_reproduces_its_published_macs_and_parameters(resnet50_profile):
    # Exported once for the session by conftest (test_inspect uses it too).
    profile, _ = resnet50_profile
    entry = catalog.lookup("resnet50")
    assert profile.macs == pytest.approx(entry.macs, rel=0.05)
    assert profile.weights["torch_parameters"] == entry.params


# Parameter counts listed in torchvision's model docs: equal counts, layer for layer, are what
# makes published latencies of those models comparable with ours.
_TORCHVISION_PARAMETERS = {
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
    "squeezenet1_1": 1_235_496,
    "shufflenet_v2_x1_0": 2_278_604,
    "googlenet": 6_624_904,  # without the auxiliary heads
    "vgg16": 138_357_544,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
}


@pytest.mark.parametrize("name", sorted(_TORCHVISION_PARAMETERS))
def test_layout_has_exactly_torchvisions_parameter_count(name):
    module = catalog.lookup(name).factory()
    assert sum(p.numel() for p in module.parameters()) == _TORCHVISION_PARAMETERS[name]


# -- transformer, recurrent ------------------------------------------------------------------


def test_transformer_takes_int64_token_ids_and_costs_its_analytic_macs(tmp_path):
    # Through the factory reference, as `edgeforge inspect edgeforge.zoo.catalog:...` does.
    profile = edgeforge.inspect("edgeforge.zoo.catalog:transformer_encoder", workdir=tmp_path)
    assert profile.inputs == [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
    ]
    assert profile.model["provenance"]["exporter"] == "torch.onnx dynamo"
    assert [(a.name, a.value) for a in profile.assumed_dims] == [("batch", 1), ("sequence", 128)]
    assert profile.macs == catalog.lookup("transformer").macs


@pytest.fixture(scope="module", params=["lstm_classifier", "gru_classifier"])
def recurrent_profile(request, tmp_path_factory) -> tuple[str, edgeforge.Profile]:
    name = request.param
    return name, _profile(name, tmp_path_factory.mktemp(name))


def test_recurrent_classifier_exports_to_the_native_onnx_rnn_op(recurrent_profile):
    name, profile = recurrent_profile
    assert profile.model["provenance"]["exporter"] == "torch.onnx dynamo"
    assert {"lstm_classifier": "LSTM", "gru_classifier": "GRU"}[name] in _op_types(profile)
    assert profile.inputs == [{"name": "frames", "dtype": "float32", "shape": ["batch", 16, 40]}]
    assert profile.outputs == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]


def test_recurrent_classifier_costs_its_analytic_macs(recurrent_profile):
    name, profile = recurrent_profile
    assert profile.macs == pytest.approx(catalog.lookup(name).macs, rel=0.05)


# -- detector ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector_profile(tmp_path_factory) -> edgeforge.Profile:
    return _profile("tiny_detector", tmp_path_factory.mktemp("detector"))


def test_detector_exports_with_a_fixed_number_of_detections(detector_profile):
    outputs = {o["name"]: (o["dtype"], o["shape"]) for o in detector_profile.outputs}
    assert outputs == {
        "boxes": ("float32", ["batch", 100, 4]),
        "scores": ("float32", ["batch", 100]),
        "labels": ("int64", ["batch", 100]),
        "num_detections": ("int64", ["batch"]),
    }
    assert detector_profile.model["provenance"]["exporter"] == "torch.onnx dynamo"


def test_detector_post_processing_needs_no_nms_op_and_no_control_flow(detector_profile):
    ops = _op_types(detector_profile)
    assert {"TopK", "GatherElements", "Exp", "Where"} <= ops
    assert not ops & {"NonMaxSuppression", "Loop", "If", "Scan", "NonZero"}


def test_detector_keeps_its_output_shape_for_any_batch(detector_profile):
    session = ort.InferenceSession(detector_profile.model["path"])
    image = catalog.lookup("tiny_detector").example_inputs(batch=3, seed=1).numpy()
    boxes, scores, labels, count = session.run(None, {"image": image})
    assert boxes.shape == (3, 100, 4) and scores.shape == labels.shape == (3, 100)
    slots = np.arange(100)[None, :] < count[:, None]
    assert (scores[slots] > 0.05).all() and (scores[~slots] == 0).all()
    assert (labels[~slots] == -1).all() and (boxes[~slots] == 0).all()
    assert (np.diff(scores, axis=1) <= 5e-5).all()  # sorted, up to the documented tie-break
    assert ((boxes >= 0) & (boxes <= 320)).all()


def test_overlapping_boxes_of_one_class_are_suppressed_but_other_classes_kept():
    detector, _, _ = catalog.build("tiny_detector")
    anchors = detector.anchors.shape[0]
    # Anchors 630-632: the three shapes of the cell at row 10, column 10 (stride 16);
    # 633: the square one of the next cell, overlapping 630 with IoU 0.5.
    square, tall, next_square = 630, 632, 633
    logits = torch.full((1, anchors, 20), -10.0)  # scores of 4.5e-5, below the threshold
    logits[0, square, 3] = math.log(0.9 / 0.1)
    logits[0, next_square, 3] = math.log(0.8 / 0.2)  # same class, overlapping: dropped
    logits[0, tall, 5] = math.log(0.7 / 0.3)  # overlapping, other class: kept
    with torch.no_grad():
        boxes, scores, labels, count = detector.postprocess(torch.zeros(1, anchors, 4), logits)
    assert count.tolist() == [2]
    assert scores[0, :3].tolist() == pytest.approx([0.9, 0.7, 0.0])
    assert labels[0, :3].tolist() == [3, 5, -1]
    assert boxes[0, 0].tolist() == pytest.approx([144.0, 144.0, 192.0, 192.0])
    assert boxes[0, 1].tolist() == pytest.approx(detector.anchors[tall].tolist())
    assert (boxes[0, 2:] == 0).all()


# -- catalog -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("mobilenet_v2", "mobilenet_v2"),
        ("mobilenetv2", "mobilenet_v2"),
        ("MobileNet-V2", "mobilenet_v2"),
        ("Mobilenet_V1_1.0_224", "mobilenet_v1"),
        ("mobilenet_v3", "mobilenet_v3_large"),
        ("mobilenetv3_small_100", "mobilenet_v3_small"),
        ("EfficientNet-B0", "efficientnet_b0"),
        ("squeezenet", "squeezenet1_1"),
        ("SqueezeNet 1.1", "squeezenet1_1"),
        ("shufflenet_v2", "shufflenet_v2_x1_0"),
        ("Inception-v1", "googlenet"),
        ("VGG-16", "vgg16"),
        ("ResNet-50", "resnet50"),
        ("resnet18", "resnet18"),
        ("lstm", "lstm_classifier"),
    ],
)
def test_names_used_in_benchmark_tables_resolve(spelling, name):
    assert catalog.lookup(spelling).name == name


def test_unknown_name_is_refused_with_close_matches():
    with pytest.raises(edgeforge.EdgeforgeError, match="did you mean mobilenet_v2"):
        catalog.lookup("mobilenet_v22")


def test_build_is_reproducible_and_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, inputs, _ = catalog.build("squeezenet")
    second, again, _ = catalog.build("squeezenet")
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(inputs, again)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_catalog_names_are_factories_for_load():
    module, inputs, options = load_factory("edgeforge.zoo.catalog:MobileNetV2")
    assert type(module).__name__ == "MobileNetV2" and not module.training
    assert tuple(inputs.shape) == (1, 3, 224, 224)
    assert options == {
        "input_names": ["image"],
        "output_names": ["logits"],
        "dynamic_axes": {"image": {0: "batch"}},
    }
    with pytest.raises(AttributeError):
        catalog.mobilenet_v99  # noqa: B018


def test_no_attribute_of_the_catalog_module_shadows_an_architecture_name():
    """`module:factory` references find real attributes before `__getattr__`; an imported
    `transformer_encoder` function would be returned instead of the catalog's factory."""
    shadowing = [
        attribute
        for attribute in vars(catalog)
        if not attribute.startswith("_") and catalog._spelling(attribute) in catalog._SPELLINGS
    ]
    assert shadowing == []


@pytest.mark.parametrize("name", catalog.names())
def test_entry_is_complete_and_its_dynamic_axes_name_its_inputs(name):
    entry = catalog.ARCHITECTURES[name]
    assert set(entry.dynamic_axes) <= set(entry.input_names)
    assert entry.source
    if entry.task == "image classification":
        assert entry.macs and entry.params


# -- pretrained models shipped in PyPI packages ------------------------------------------------

_PACKAGED = packaged_onnx_models()
_NOT_INSTALLED = pytest.param(
    "none",
    None,
    marks=pytest.mark.skip(
        reason="no package with bundled ONNX models installed (pip install silero-vad==6.2.3)"
    ),
)


@pytest.mark.parametrize(("name", "path"), list(_PACKAGED.items()) or [_NOT_INSTALLED])
def test_packaged_pretrained_model_loads(name, path):
    model = edgeforge.load(path)
    assert model.onnx_path == path
    assert model.inputs and model.outputs


def test_packaged_models_of_an_absent_package_are_none():
    absent = (PackagedSource("edgeforge-no-such-package", "nowhere", ""),)
    assert packaged_onnx_models(absent) == {}


def test_packaged_models_are_found_from_the_record_and_never_outside_the_package(
    tmp_path, monkeypatch
):
    """A RECORD entry that climbs out of the package (../) is ignored."""
    site = tmp_path / "site"
    models = site / "fakepkg" / "models"
    models.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph), models / "tiny.onnx")
    onnx.save(helper.make_model(graph), tmp_path / "outside.onnx")
    info = site / "fakepkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    (info / "RECORD").write_text(
        "fakepkg/models/tiny.onnx,,\nfakepkg/models/../../../outside.onnx,,\n"
    )
    monkeypatch.syspath_prepend(str(site))
    found = packaged_onnx_models((PackagedSource("fakepkg", "fakepkg/models", ""),))
    assert found == {"fakepkg/tiny": (models / "tiny.onnx").resolve()}
    assert edgeforge.load(found["fakepkg/tiny"]).inputs[0].name == "x"
