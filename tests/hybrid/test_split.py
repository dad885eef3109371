"""`split`: the chosen cut against all-edge and all-cloud, head∘tail against the whole model,
and cuts that do not separate the graph."""

from __future__ import annotations

import json
import math
import re

import onnx
import pytest
from hybrid_models import CLOUD_T4, Link

from edgeforge.cli import main
from edgeforge.errors import EdgeforgeError
from edgeforge.hybrid import split
from edgeforge.report.html import render_html

# A slow uplink next to a fast server: the raw input costs more to send than a cut tensor, and
# the tail costs more on the device than on the server.
WIFI = Link("wifi", rtt_ms=10, uplink_mbps=50, downlink_mbps=100, loss=0.001)
DEVICE = "raspberry-pi-4"


def test_cnn_split_beats_all_edge_and_all_cloud(cnn_model, tmp_path):
    result = split(cnn_model, DEVICE, WIFI, cloud=CLOUD_T4, compress="int8", out=tmp_path / "cnn")
    assert result.beats_all_edge and result.beats_all_cloud, result.to_dict()
    assert result.fastest == "split" and result.chosen is result.split
    assert result.check.passed and result.compression.passed
    head, tail = onnx.load(result.head), onnx.load(result.tail)
    assert [o.name for o in head.graph.output] == list(result.split.tensors)
    assert [i.name for i in tail.graph.input] == list(result.split.tensors)
    written = json.loads((tmp_path / "cnn" / "split.json").read_text())
    assert written["chosen"]["kind"] == "split"
    assert written["split"]["tensors"] == list(result.split.tensors)


def test_all_edge_is_chosen_when_it_is_fastest_and_the_report_says_so(cnn_model, tmp_path):
    # A slow, distant uplink: sending anything costs more than the whole model on the device.
    # Before: the best split was presented as "chosen" however much slower than all-edge.
    slow = Link("slow", rtt_ms=300, uplink_mbps=0.5, downlink_mbps=2, loss=0.01)
    result = split(cnn_model, DEVICE, slow, cloud=CLOUD_T4)
    assert result.fastest == "all-edge" and result.chosen.kind == "all-edge"
    assert result.chosen.total_ms < result.split.total_ms < math.inf
    assert result.split.kind == "split" and result.check.passed  # still cut and verified
    assert any(note.startswith("all-edge is fastest") for note in result.notes)
    data = result.to_dict()
    assert data["chosen"]["kind"] == "all-edge" and data["split"]["kind"] == "split"

    html = render_html({"split": data})
    assert "<pre>" not in html
    headers = re.findall(r"<th>([^<]*)</th>", html)
    for header in ("option", "sent to the cloud", "device ms", "transfer ms", "total ms"):
        assert header in headers
    assert html.count("<svg") >= 2  # where the time goes; every cut considered
    chosen_row = re.search(r'<tr style="font-weight: 600"><td>([^<]*)</td>', html)
    assert chosen_row and chosen_row.group(1) == "all on the device"


def test_transformer_split_beats_all_edge_and_all_cloud(frames_transformer, tmp_path):
    result = split(frames_transformer, DEVICE, WIFI, cloud=CLOUD_T4, out=tmp_path / "tf")
    assert result.beats_all_edge and result.beats_all_cloud, result.to_dict()
    assert result.check.passed
    assert max(o.max_abs for o in result.check.outputs) < 1e-4


def test_token_ids_are_cheaper_to_send_than_any_cut(token_transformer):
    # int64 ids (8 bytes a token) are smaller than any hidden state (4 x d_model bytes a
    # token): no cut can beat all-cloud, and the result must say so rather than claim a win.
    result = split(token_transformer, DEVICE, WIFI, cloud=CLOUD_T4)
    assert not result.beats_all_cloud
    assert result.fastest in ("all-edge", "all-cloud")
    assert result.check.passed and result.head is None


def test_bytes_objective_sends_least(cnn_model):
    result = split(cnn_model, DEVICE, WIFI, cloud=CLOUD_T4, objective="bytes")
    assert result.chosen is result.split
    assert result.split.upload_bytes == min(c.upload_bytes for c in result.candidates)


def test_offline_network_leaves_only_all_edge(cnn_model):
    offline = Link("offline", rtt_ms=0, uplink_mbps=0, downlink_mbps=0, loss=1.0)
    result = split(cnn_model, DEVICE, offline, cloud=CLOUD_T4, cut="mean")
    assert result.split.tensors == ("mean",) and result.check.passed  # a forced valid cut
    assert result.fastest == "all-edge" and result.chosen.kind == "all-edge"
    assert result.to_dict()["all_cloud"]["total_ms"] == "inf"


def test_forced_cut_inside_a_residual_block_is_refused(cnn_model):
    # The first conv of a residual block: the skip connection crosses the cut too.
    proto = cnn_model.proto()
    inner = next(n.output[0] for n in proto.graph.node[3:] if n.op_type == "Relu")
    with pytest.raises(EdgeforgeError) as caught:
        split(cnn_model, DEVICE, WIFI, cloud=CLOUD_T4, cut=inner)
    message = str(caught.value)
    assert "\n" not in message
    assert "does not separate the graph" in message and "the tail also needs" in message
    assert "valid cuts: " in message


def test_forced_cut_that_is_not_a_tensor_is_refused(cnn_model):
    with pytest.raises(EdgeforgeError, match=r"has no tensor 'nope'.*valid cuts"):
        split(cnn_model, DEVICE, WIFI, cloud=CLOUD_T4, cut="nope")


def test_out_folder_with_other_files_is_never_replaced(cnn_model, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(EdgeforgeError, match="holds other files"):
        split(cnn_model, DEVICE, WIFI, cloud=CLOUD_T4, out=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_cli_split_json_names_head_and_tail(cnn_model, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["split", str(cnn_model.onnx_path), "--device", DEVICE, "--network", "wifi"]
    assert main([*argv, "--out", str(out), "--compress", "int8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["head"] == str(out / "head.onnx") and data["tail"] == str(out / "tail.onnx")
    assert main([*argv, "--out", str(out), "--cut", "nope"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("edgeforge: error: --cut nope does not separate") and "\n" not in error
