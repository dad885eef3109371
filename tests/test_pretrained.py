"""A real pretrained model shipped inside a PyPI package converts and verifies.

Silero VAD (the `silero-vad` wheel carries its ONNX files) is a trained voice-activity
detector: a convolutional front end, an LSTM and a decoder, with a recurrent state input.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeforge.convert import convert
from edgeforge.zoo.packaged import packaged_onnx_models

MODEL = "silero-vad/silero_vad_op18_ifless"  # the variant without If nodes
DYNAMIC_RANK = "silero-vad/silero_vad_16k_op15"  # its ReduceMean has an input of unknown rank


@pytest.fixture(scope="module")
def models():
    found = packaged_onnx_models()
    if MODEL not in found:
        pytest.skip("silero-vad is not installed (pip install 'edgeforge[dev]')")
    return found


@pytest.fixture(scope="module")
def silero_path(models):
    return models[MODEL]


@pytest.fixture(scope="module")
def audio_chunks(tmp_path_factory):
    """Eight 32 ms chunks at 16 kHz: silence, tones and noise, with a fresh state each."""
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    time = np.arange(512) / 16000
    for i in range(8):
        tone = 0.3 * np.sin(2 * np.pi * (150 + 60 * i) * time) if i % 2 else 0.0
        chunk = (tone + 0.02 * i * rng.standard_normal(512)).astype(np.float32)
        np.savez(
            folder / f"{i}.npz",
            input=chunk[None],
            state=np.zeros((2, 1, 128), np.float32),
            sr=np.array(16000, np.int64),
        )
    return folder


@pytest.mark.slow
def test_silero_vad_converts_and_verifies_on_the_onnx_runtimes(silero_path, audio_chunks, tmp_path):
    result = convert(
        silero_path, "onnxruntime,onnxruntime-mobile,openvino,web", tmp_path, data=audio_chunks
    )
    for target in result.targets:
        assert target.status == "verified", (target.runtime, target.detail)
        assert target.verification["samples"] == 8
        probability = next(o for o in target.verification["outputs"] if o["name"] == "output")
        assert probability["max_abs"] < 1e-4


def test_a_model_from_onnx_the_bridge_cannot_take_is_refused_naming_the_op(silero_path, tmp_path):
    result = convert(silero_path, "litert", tmp_path)
    (target,) = result.targets
    assert target.status == "unsupported"
    assert "torch.export program" in target.detail and "onnx2torch" in target.detail


@pytest.mark.slow
def test_the_variant_openvino_cannot_take_is_explained_by_op(models, audio_chunks, tmp_path):
    result = convert(models[DYNAMIC_RANK], "onnxruntime,openvino", tmp_path, data=audio_chunks)
    ort, openvino = result.targets
    assert ort.status == "verified"
    assert openvino.status == "unsupported"
    assert "ReduceMean" in openvino.detail and "OpenVINO cannot convert it" in openvino.detail
    # The refusal names the fixed shapes OpenVINO does convert it at, and they work.
    assert "--shape input=1x" in openvino.detail, openvino.detail
    pinned = convert(
        models[DYNAMIC_RANK],
        "openvino",
        tmp_path / "pinned",
        data=audio_chunks,
        shapes={"input": (1, 512)},
    )
    assert pinned.targets[0].status == "verified", pinned.targets[0].detail


def test_synthesised_audio_is_long_enough_for_the_model(models, tmp_path):
    """16 samples are too short for Silero VAD's reflect padding (64): the size picker tries
    longer ones in ONNX Runtime and verifies at one the model takes (issue 18, class 4)."""
    result = convert(models[DYNAMIC_RANK], "onnxruntime", tmp_path)
    assert result.targets[0].status == "verified", result.targets[0].detail
