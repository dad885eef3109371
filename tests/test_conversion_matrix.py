"""Eight architectures to six runtimes: every target is verified or precisely explained.

Each conversion runs for real (child processes, real runtimes); the summary table is printed
(run with -s to see it) and every cell is checked. The suite converts the four architectures
whose layers no other test takes to every runtime (depthwise convolutions, attention with int64
token ids, a recurrent layer, a detector's top-k and IoU suppression); the other four convert
with `EDGEFORGE_FULL_MATRIX=1` (the README's table is that run), and `make corpus` converts 30
more architectures.
"""

from __future__ import annotations

import os

import pytest

from edgeforge.convert import convert
from edgeforge.zoo import catalog

TARGETS = "onnxruntime,openvino,litert,executorch,web,coreml"
ARCHITECTURES = [
    "mobilenet_v2",  # depthwise-separable CNN
    "resnet18",  # residual CNN
    "efficientnet_b0",  # squeeze-excitation, SiLU
    "transformer_encoder",  # attention, int64 token ids, dynamic sequence
    "lstm_classifier",  # recurrent
    "gru_classifier",  # recurrent
    "tiny_detector",  # detector head with top-k and IoU suppression
    "shufflenet_v2_x1_0",  # channel shuffle
]
# Plain, residual, squeeze-excitation and channel-shuffle CNNs and a second recurrent layer add
# minutes and no layer kind the four above lack: only in the full run.
_FULL_ONLY = {"resnet18", "efficientnet_b0", "gru_classifier", "shufflenet_v2_x1_0"}
if os.environ.get("EDGEFORGE_FULL_MATRIX") != "1":
    ARCHITECTURES = [name for name in ARCHITECTURES if name not in _FULL_ONLY]
# A status that is not a verified artifact must say why in at least this many characters.
_PRECISE = 25
_RESULTS: dict[str, dict[str, tuple[str, str]]] = {}


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_target_is_verified_or_explained(name, tmp_path):
    module, inputs, options = catalog.build(name)
    result = convert(module, TARGETS, tmp_path, example_inputs=inputs, **options)
    _RESULTS[name] = {t.runtime: (t.status, t.detail) for t in result.targets}
    assert [t.runtime for t in result.targets] == TARGETS.split(",")
    for target in result.targets:
        if target.status == "verified":
            assert target.verification["passed"]
        elif target.status == "built-not-run":
            assert target.runtime == "coreml" and "macOS" in target.detail
        else:
            assert len(target.detail) >= _PRECISE, (target.runtime, target.detail)
    # ONNX Runtime runs the source format itself: it must always verify.
    assert result.targets[0].status == "verified", result.targets[0].detail


@pytest.mark.slow
def test_summary_table(capsys):
    if len(_RESULTS) < len(ARCHITECTURES):
        pytest.skip("the conversion tests did not all run in this session")
    runtimes = TARGETS.split(",")
    lines = ["| architecture | " + " | ".join(runtimes) + " |"]
    lines.append("|" + " --- |" * (len(runtimes) + 1))
    for name in ARCHITECTURES:
        cells = [_RESULTS[name][r][0] for r in runtimes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
        for name in ARCHITECTURES:
            for runtime in runtimes:
                status, detail = _RESULTS[name][runtime]
                if status != "verified":
                    print(f"{name} / {runtime}: {status}: {detail}")
    verified = sum(s == "verified" for row in _RESULTS.values() for s, _ in row.values())
    assert verified >= 2 * len(ARCHITECTURES)
