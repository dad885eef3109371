"""The `web` runtime: onnxruntime-web really run in headless Chromium (no mocks).

Tests that need the browser skip, naming the fix, where chromium or onnxruntime-web is missing
(`edgeforge setup web` installs both); the rest run everywhere.
"""

from __future__ import annotations

import re
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import edgeforge
from edgeforge.recipe import Recipe
from edgeforge.runtimes import RuntimeUnavailable, get_runtime
from edgeforge.runtimes.web import ORT_WEB_VERSION, WebSession

__all__: list[str] = []


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own answer cache, so a check really starts a browser."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEFORGE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def web():
    runtime = get_runtime("web")
    blocker = runtime.execution_blocker()
    if blocker:
        pytest.skip(f"web runtime cannot run here: {blocker}")
    return runtime


@pytest.fixture(scope="module")
def digits_session(web, digits_model, tmp_path_factory):
    artifact = web.build(digits_model, Recipe(), tmp_path_factory.mktemp("web") / "digits")
    with web.open(artifact) as session:
        yield session


class TokenClassifier(torch.nn.Module):
    """int64 token ids in, per-token logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def cpu_outputs(model: edgeforge.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


def assert_matches(web_out: np.ndarray, cpu_out: np.ndarray) -> None:
    assert web_out.shape == cpu_out.shape and web_out.dtype == cpu_out.dtype
    scale = max(1.0, float(np.abs(cpu_out).max()))
    assert float(np.abs(web_out - cpu_out).max()) <= 1e-4 * scale


def one_node_model(tmp_path: Path, node: onnx.NodeProto, inputs, outputs, opset: int):
    graph = helper.make_graph([node], node.op_type.lower(), inputs, outputs)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10
    path = tmp_path / f"{node.op_type.lower()}-{opset}.onnx"
    onnx.save(proto, path)
    return edgeforge.load(path)


def live_in_group(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies await their reaper, not us)."""
    alive = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


# -- parity with ONNX Runtime on the CPU -----------------------------------------------------


def test_web_output_matches_onnxruntime_cpu(digits_session, digits_model):
    image = np.random.default_rng(0).standard_normal((1, 1, 8, 8), dtype=np.float32)
    logits = digits_session.run({"image": image})["logits"]
    assert_matches(logits, cpu_outputs(digits_model, {"image": image})[0])


def test_dynamic_batch_of_three_runs_in_the_same_page(digits_session, digits_model):
    images = np.random.default_rng(1).standard_normal((3, 1, 8, 8), dtype=np.float32)
    started = time.perf_counter()
    logits = digits_session.run({"image": images})["logits"]
    assert time.perf_counter() - started < 5  # the page is warm: no browser start per run
    assert logits.shape == (3, 10)
    assert_matches(logits, cpu_outputs(digits_model, {"image": images})[0])


def test_int64_ids_pass_as_bigint_and_match_cpu(web, tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 5))
    model = edgeforge.load(TokenClassifier().eval(), ids, workdir=tmp_path / "work")
    (spec,) = model.inputs
    assert spec.dtype == "int64"
    feeds = {spec.name: ids.numpy()}
    artifact = web.build(model, Recipe(), tmp_path / "artifact")
    with web.open(artifact) as session:
        (logits,) = session.run(feeds).values()
    assert_matches(logits, cpu_outputs(model, feeds)[0])

    traps = [f for f in web.check(model) if f.severity == "trap"]
    assert any(spec.name in f.message and "BigInt64Array" in f.message for f in traps)


# -- check ------------------------------------------------------------------------------------


def test_op_without_a_web_kernel_is_reported_unsupported(web, tmp_path):
    # ImageDecoder (opset 20) passes the ONNX checker, and onnxruntime-web's wasm build has no
    # kernel for it. (Tried first and found supported: ai.onnx.ml Normalizer, com.microsoft
    # Inverse and MatMulNBits, Det, DFT, Col2Im, DeformConv, RegexFullMatch, Attention-23.)
    model = one_node_model(
        tmp_path,
        helper.make_node("ImageDecoder", ["encoded"], ["pixels"]),
        [helper.make_tensor_value_info("encoded", TensorProto.UINT8, [16])],
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["h", "w", "c"])],
        opset=20,
    )
    (finding,) = [f for f in web.check(model) if f.severity == "unsupported"]
    assert finding.op_type == "ImageDecoder"
    assert "Could not find an implementation for ImageDecoder" in finding.message
    assert "split the model" in finding.workaround
    assert ORT_WEB_VERSION in finding.evidence


def test_opset_newer_than_onnxruntime_web_is_reported_though_cpu_runs_it(web, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = one_node_model(tmp_path, helper.make_node("Celu", ["x"], ["y"]), [x], [y], opset=27)
    cpu_outputs(model, {"x": np.ones(2, np.float32)})  # ONNX Runtime 1.32 takes opset 27

    (finding,) = [f for f in web.check(model) if f.severity == "unsupported"]
    newest = re.search(r"till opset (\d+)", finding.message)
    assert newest and int(newest.group(1)) < 27
    assert f"opset {newest.group(1)} or lower" in finding.workaround


def test_check_runs_once_per_model_then_reads_the_cache(web, digits_model, private_cache):
    first = web.check(digits_model)
    assert [f.severity for f in first] == ["info"]  # only: WebGPU not checked here
    assert "WebGPU" in first[0].message
    assert list((private_cache / f"web-{ORT_WEB_VERSION}" / "check").glob("*.json"))

    started = time.perf_counter()
    assert web.check(digits_model) == first
    assert time.perf_counter() - started < 1  # no browser was started


# -- lifetime ---------------------------------------------------------------------------------


def test_close_leaves_no_server_port_or_browser_process(web, digits_model, tmp_path):
    artifact = web.build(digits_model, Recipe(), tmp_path / "artifact")
    session = web.open(artifact)
    port, pid = session.port, session.browser_pid
    assert live_in_group(pid)
    session.close()

    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass
    assert live_in_group(pid) == []
    with pytest.raises(edgeforge.EdgeforgeError, match="closed"):
        session.run({"image": np.zeros((1, 1, 8, 8), np.float32)})


def test_browser_that_misses_the_deadline_is_one_line_and_cleaned_up(
    web, digits_model, tmp_path, monkeypatch
):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the session's profile goes
    with pytest.raises(edgeforge.EdgeforgeError) as caught:
        WebSession(digits_model.onnx_path, digits_model.inputs, digits_model.outputs, timeout=0.05)
    message = str(caught.value)
    assert "\n" not in message and "took over 0.05 s to load the model" in message
    assert not [p for p in Path("/proc").glob("[0-9]*") if _mentions(p, str(scratch))]
    assert list(scratch.iterdir()) == []


def _mentions(proc: Path, marker: str) -> bool:
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and marker.encode() in (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False


# -- without a browser (run everywhere) ---------------------------------------------------------


def test_missing_browser_blocks_execution_but_not_build(digits_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_CHROMIUM", str(tmp_path / "no-such-chromium"))
    runtime = get_runtime("web")
    availability = runtime.availability()
    assert availability.installed and not availability.can_execute
    assert "apt-get install chromium" in availability.reason

    artifact = runtime.build(digits_model, Recipe(), tmp_path / "artifact")
    assert artifact.path.is_file()
    with pytest.raises(RuntimeUnavailable, match="chromium"):
        runtime.open(artifact)


def test_missing_onnxruntime_web_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_CHROMIUM", sys.executable)  # any executable passes that test
    monkeypatch.setenv("EDGEFORGE_WEB_DIR", str(tmp_path))
    reason = get_runtime("web").execution_blocker()
    assert reason is not None and "edgeforge setup web" in reason


def split_weights(model: edgeforge.Model, folder: Path) -> edgeforge.Model:
    """`model` saved again with every weight in an external data file."""
    proto = model.proto(load_weights=True)
    onnx.save_model(proto, folder / "split.onnx", save_as_external_data=True, location="w.data")
    split = edgeforge.load(folder / "split.onnx")
    assert split.uses_external_data
    return split


def test_external_data_reaches_the_page_through_external_data_option(web, digits_model, tmp_path):
    model = split_weights(digits_model, tmp_path)  # what check() and an over-2-GB build serve
    image = np.ones((1, 1, 8, 8), np.float32)
    with WebSession(model.onnx_path, model.inputs, model.outputs) as session:
        logits = session.run({"image": image})["logits"]
    assert_matches(logits, cpu_outputs(digits_model, {"image": image})[0])


def test_external_data_is_inlined_so_the_browser_fetches_one_file(digits_model, tmp_path):
    model = split_weights(digits_model, tmp_path)

    artifact = get_runtime("web").build(model, Recipe(), tmp_path / "artifact")
    assert sorted(p.name for p in artifact.folder.iterdir()) == ["manifest.json", "model.onnx"]
    assert any("inlined" in note for note in artifact.manifest.notes)
    assert {"onnxruntime", "onnxruntime-web", "chromium"} <= set(artifact.manifest.tools)
    image = np.ones((2, 1, 8, 8), np.float32)
    (inlined,) = ort.InferenceSession(str(artifact.path)).run(None, {"image": image})
    assert_matches(inlined, cpu_outputs(digits_model, {"image": image})[0])
