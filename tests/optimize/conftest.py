"""A digits CNN that int8 breaks honestly, and its data split into --data folders.

One channel of the first block is scaled up by `OUTLIER` and the next convolution scales it
back down: the float model computes the same function, but that channel's activation range is
thousands of times the others', so per-tensor int8 activations round every other channel to
zero. This is the outlier-channel pattern that makes plain int8 lose accuracy in practice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgeforge
from edgeforge.zoo import train_digits_cnn

OUTLIER = 1e4


@pytest.fixture(scope="session")
def trained_digits_for_optimize():
    return train_digits_cnn(epochs=4, seed=0)


@pytest.fixture(scope="session")
def outlier_digits(trained_digits_for_optimize, tmp_path_factory) -> Path:
    """The ONNX file of the digits CNN with one outlier channel (same float outputs)."""
    module, data, _ = trained_digits_for_optimize
    module = type(module)()
    module.load_state_dict(trained_digits_for_optimize[0].state_dict())
    module.eval()
    with torch.no_grad():
        norm, conv = module.features[1], module.features[3]
        norm.weight[0] *= OUTLIER
        norm.bias[0] *= OUTLIER
        conv.weight[:, 0] /= OUTLIER
    model = edgeforge.load(
        module,
        torch.from_numpy(data.test_x[:1]),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
        workdir=tmp_path_factory.mktemp("outlier-digits"),
    )
    return model.onnx_path


@pytest.fixture(scope="session")
def digits_folder(trained_digits_for_optimize, tmp_path_factory) -> Path:
    """The held-back digits as image.npy + labels.npy (64 calibrate, the rest are held out)."""
    _, data, _ = trained_digits_for_optimize
    folder = tmp_path_factory.mktemp("digits-data")
    np.save(folder / "image.npy", data.test_x)
    np.save(folder / "labels.npy", data.test_y)
    return folder


def _tiny_bert(folder: Path, outlier: float | None = None) -> edgeforge.Model:
    """A 2-layer BERT encoder (hidden 32, random weights, built from a config: no download)
    whose output is `last_hidden_state`. With `outlier`, channel 3 of every layer's output
    LayerNorm is scaled by it, as real BERTs have a few outlier dimensions."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    bert = BertModel(config).eval()
    if outlier is not None:
        with torch.no_grad():
            for layer in bert.encoder.layer:
                layer.output.LayerNorm.weight[3] *= outlier
                layer.output.LayerNorm.bias[3] += outlier

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(0, 100, (1, 16))
    return edgeforge.load(
        Encoder().eval(),
        (ids, torch.ones_like(ids)),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
        },
        workdir=folder,
    )


@pytest.fixture(scope="session")
def sentences(tmp_path_factory) -> Path:
    """24 tokenised sentences of 16 tokens with padding, as .npz (input_ids, attention_mask)."""
    data = tmp_path_factory.mktemp("sentences")
    rng = np.random.default_rng(0)
    for i in range(24):
        mask = np.ones((1, 16), np.int64)
        mask[0, rng.integers(5, 16) :] = 0  # padding: the attention mask's -inf stand-in is used
        ids = rng.integers(1, 100, (1, 16)) * mask
        np.savez(data / f"sentence-{i:02d}.npz", input_ids=ids, attention_mask=mask)
    return data


@pytest.fixture(scope="session")
def tiny_bert(sentences, tmp_path_factory) -> tuple[edgeforge.Model, Path]:
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert")), sentences


@pytest.fixture(scope="session")
def outlier_bert(sentences, tmp_path_factory) -> tuple[edgeforge.Model, Path]:
    """The tiny BERT with a 300x outlier dimension: int8 rounds every other dimension of its
    hidden states to zero, yet their raw cosine stays ~0.99 (the outlier dominates it)."""
    return _tiny_bert(tmp_path_factory.mktemp("outlier-bert"), outlier=300.0), sentences
