"""A slice of the conversion corpus (`tests/corpus_models.py`), every cell checked.

The whole corpus (30 architectures, six runtimes each) takes too long for the test suite; it is
`make corpus` (`bench/conversion_corpus.py`, results in bench/results/conversion_corpus.json
and the README). This slice converts the architectures that issue 18's class-5 fixes are about:
transformers' EfficientNet on OpenVINO (a pooling window larger than its input), MTCNN's RNet
on ExecuTorch (PReLU after a fully connected layer) and VideoMAE on ExecuTorch (a 3-D
convolution). Each must verify there and on ONNX Runtime; the slice converts only to those (the
whole matrix is the bench's), and any other cell is verified or refused with a reason.
"""

from __future__ import annotations

import pytest
from corpus_models import SLICE, build

from edgeforge.convert import convert

MUST_VERIFY = {
    "efficientnet": {"onnxruntime", "openvino"},
    "mtcnn_rnet": {"onnxruntime", "executorch"},
    "videomae": {"onnxruntime", "executorch"},
}
_PRECISE = 25  # a refusal says why in at least this many characters


@pytest.mark.slow
@pytest.mark.parametrize("name", SLICE)
def test_corpus_slice_is_verified_or_explained(name, tmp_path, capsys):
    source, inputs = build(name)
    result = convert(source, ",".join(sorted(MUST_VERIFY[name])), tmp_path, example_inputs=inputs)
    with capsys.disabled():
        print(f"\n{name}: " + ", ".join(f"{t.runtime}={t.status}" for t in result.targets))
    cells = {t.runtime: t for t in result.targets}
    for runtime in MUST_VERIFY[name]:
        assert cells[runtime].status == "verified", (runtime, cells[runtime].detail)
    for target in result.targets:
        if target.status == "verified":
            assert target.verification["passed"]
        elif target.status == "built-not-run":
            assert target.runtime == "coreml" and "macOS" in target.detail
        else:
            assert target.status in ("unsupported", "not-installed"), target.detail
            assert len(target.detail) >= _PRECISE and "Traceback" not in target.detail
    if "executorch" in MUST_VERIFY[name] and name != "efficientnet":
        assert any("rewritten" in note for note in _notes(tmp_path / "executorch"))


def _notes(folder):
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest.get("notes", [])
