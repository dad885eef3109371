"""ONNX-only sources reach the torch runtimes through the onnx2torch bridge (issue 18, class 3),
and synthesised inputs take sizes a model can run at (class 4).

Before: a model that shipped only as ONNX was refused by LiteRT, ExecuTorch and Core ML, and a
detector with dynamic height and width crashed every runtime on 16x16 synthesised inputs (a
Concat of an upsampled 1x1 map with a 2x2 one). These tests defend the new contract on real
graphs: a CNN and a YOLO-like detector exported from torch, a `transformers` BERT encoder
built from a config, and Silero VAD as its wheel ships it.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib import resources

import onnx
import pytest
import torch
from graphs import save_det_graph
from onnx import helper

import edgeforge
from edgeforge._onnx_bridge import BRIDGE, bridge
from edgeforge.convert import convert
from edgeforge.evaluate.data import synthesize
from edgeforge.recipe import Recipe
from edgeforge.runtimes import Artifact, get_runtime

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnx2torch") is None, reason="onnx2torch (the bridge) not installed"
)


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(16, 4),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features(image)


class YoloLike(torch.nn.Module):
    """Stride-32 backbone, FPN-style neck (upsample, Concat with the finer map), one head."""

    def __init__(self) -> None:
        super().__init__()

        def block(i: int, o: int, stride: int) -> torch.nn.Module:
            return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, stride, 1), torch.nn.SiLU())

        self.p3 = torch.nn.Sequential(block(3, 8, 2), block(8, 8, 2), block(8, 16, 2))
        self.p4 = block(16, 16, 2)
        self.p5 = block(16, 32, 2)
        self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
        self.n4 = block(48, 16, 1)
        self.n3 = block(32, 16, 1)
        self.head = torch.nn.Conv2d(16, 6, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p3 = self.p3(images)
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        n4 = self.n4(torch.cat([self.up(p5), p4], 1))
        n3 = self.n3(torch.cat([self.up(n4), p3], 1))
        return self.head(n3).flatten(2)


class FixedSizeOnly(torch.nn.Module):
    """Dynamic height and width in the graph, but a Linear that takes `height` x `width` only."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(height * width, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(image.flatten(1))


def _export(module: torch.nn.Module, example: torch.Tensor, path, name: str, axes: dict) -> str:
    torch.manual_seed(0)
    torch.onnx.export(
        module.eval(), (example,), str(path), input_names=[name], dynamo=False, dynamic_axes=axes
    )
    return str(path)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    return _export(SmallCNN(), torch.randn(1, 3, 32, 32), path, "image", {"image": {0: "batch"}})


@pytest.fixture(scope="module")
def yolo_onnx(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("yolo") / "yolo.onnx"
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    return _export(YoloLike(), torch.randn(1, 3, 64, 64), path, "images", axes)


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory) -> str:
    pytest.importorskip("transformers")
    from tiny_transformers import bert_encoder

    module, inputs = bert_encoder()
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    torch.onnx.export(module, (), str(path), kwargs=inputs, input_names=list(inputs), dynamo=True)
    return str(path)


# -- class 4: sizes a model can take ----------------------------------------------------------


def test_a_yolo_like_graph_with_dynamic_size_gets_a_multiple_of_its_stride(yolo_onnx):
    samples = synthesize(edgeforge.load(yolo_onnx), count=1)
    height, width = samples.feeds[0]["images"].shape[2:]
    assert height % 32 == 0 and width % 32 == 0  # 16x16 broke the FPN's Concat


def test_the_size_in_the_models_metadata_comes_first(yolo_onnx, tmp_path):
    proto = onnx.load(yolo_onnx)
    helper.set_model_props(proto, {"imgsz": "[96, 64]", "stride": "32"})
    path = tmp_path / "with_metadata.onnx"
    onnx.save(proto, path)
    samples = synthesize(edgeforge.load(path), count=1)
    assert samples.feeds[0]["images"].shape == (1, 3, 96, 64)


@pytest.mark.slow
def test_the_yolo_like_onnx_verifies_and_bridges_at_that_size(yolo_onnx, tmp_path):
    (target,) = convert(yolo_onnx, "onnxruntime", tmp_path).targets
    assert target.status == "verified", target.detail  # it crashed on 16x16 before
    bridged = bridge(edgeforge.load(yolo_onnx))  # what LiteRT, ExecuTorch and Core ML take
    assert "[1, 3, 32, 32]" in bridged.provenance.exporter_note
    assert max(bridged.provenance.export_check.values()) < 1e-4


def test_the_size_a_dense_head_implies_is_found(tmp_path):
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    example = torch.randn(1, 1, 10, 10)
    path = _export(FixedSizeOnly(10, 10), example, tmp_path / "ten.onnx", "image", axes)
    samples = synthesize(edgeforge.load(path), count=1)
    assert samples.feeds[0]["image"].shape == (1, 1, 10, 10)  # 100 features, 1 channel


def test_a_model_that_runs_at_no_tried_size_asks_for_shape_or_data(tmp_path):
    path = _export(
        FixedSizeOnly(10, 12),
        torch.randn(1, 1, 10, 12),
        tmp_path / "fixed.onnx",
        "image",
        {"image": {0: "batch", 2: "height", 3: "width"}},
    )
    (target,) = convert(path, "onnxruntime", tmp_path / "out").targets
    assert target.status == "unsupported"  # explained, not "crashed"
    assert "fails on synthesised inputs at every size tried" in target.detail
    assert "--shape image=Nx1xNxN" in target.detail and "--data" in target.detail
    pinned = convert(path, "onnxruntime", tmp_path / "pinned", shapes={"image": (1, 1, 10, 12)})
    assert pinned.targets[0].status == "verified"


# -- class 3: the bridge -------------------------------------------------------------------------


def test_the_bridge_leaves_torchvision_out(cnn_onnx):
    """transformers breaks when torchvision is half there; the bridge must not plant one."""
    bridged = bridge(edgeforge.load(cnn_onnx))
    assert bridged.torch_program is not None and bridged.torch_program.is_file()
    assert "torchvision" not in sys.modules
    assert bridged.provenance.exporter == BRIDGE
    assert max(bridged.provenance.export_check.values()) < 1e-4  # against ONNX Runtime


def test_a_transformers_encoder_from_onnx_bridges_with_parity(bert_onnx):
    """The dynamo exporter's opset-20 graph: Gelu (shimmed), Reshape allowzero, Cast/IsNaN
    version bumps served by older converters."""
    model = edgeforge.load(bert_onnx)
    bridged = bridge(model)
    assert bridged.provenance.exporter == BRIDGE
    errors = bridged.provenance.export_check
    assert set(errors) == {spec.name for spec in model.outputs}
    assert max(errors.values()) < 1e-4


@pytest.mark.slow
def test_an_onnx_cnn_reaches_litert_and_coreml(cnn_onnx, tmp_path):
    result = convert(cnn_onnx, "litert,coreml", tmp_path)
    statuses = {t.runtime: t for t in result.targets}
    for name in ("litert",):
        target = statuses[name]
        if target.status != "not-installed":
            assert target.status == "verified", (name, target.detail)
            notes = Artifact.load(tmp_path / name).manifest.notes
            assert any(BRIDGE in note for note in notes)  # the manifest says where it came from
    assert statuses["coreml"].status in ("built-not-run", "verified", "not-installed")


def test_an_op_the_bridge_lacks_is_named_in_the_refusal(tmp_path):
    """Silero VAD as its wheel ships it branches on the sample rate (an ONNX If)."""
    pytest.importorskip("silero_vad")
    path = resources.files("silero_vad") / "data" / "silero_vad.onnx"
    (target,) = convert(str(path), "litert", tmp_path).targets
    assert target.status == "unsupported"
    assert "onnx2torch has no converter for If x1" in target.detail
    assert "\n" not in target.detail
    (finding,) = get_runtime("litert").check(edgeforge.load(str(path)))
    assert finding.severity == "unsupported" and finding.op_type == "If"


def test_an_op_without_any_converter_is_refused_before_any_work(tmp_path):
    """Det has an ONNX Runtime kernel but no onnx2torch converter."""
    path = save_det_graph(tmp_path)
    model = edgeforge.load(path)
    with pytest.raises(edgeforge.EdgeforgeError, match=r"no converter for Det x1"):
        bridge(model)
    with pytest.raises(edgeforge.EdgeforgeError) as refused:
        get_runtime("executorch").build(model, Recipe(), tmp_path / "out")
    assert "torch.export program" in str(refused.value) and "Det" in str(refused.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_cnn_shipped_in_the_onnx_wheel_bridges_with_parity():
    """SqueezeNet as the onnx wheel ships it for its backend tests (opset 9, Dropout and all):
    op coverage only, its stand-in weights make every output the same."""
    path = resources.files("onnx") / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"
    if not path.is_file():
        pytest.skip("this onnx wheel ships no light_squeezenet.onnx")
    bridged = bridge(edgeforge.load(str(path)))
    assert bridged.provenance.exporter == BRIDGE
    assert max(bridged.provenance.export_check.values()) < 1e-4
