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


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> tuple[edgeforge.Model, Path]:
    """A 2-layer BERT encoder (hidden 32, random weights, built from a config: no download)
    whose output is `last_hidden_state`, and 24 tokenised sentences with padding as .npz."""
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

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    folder = tmp_path_factory.mktemp("tiny-bert")
    ids = torch.randint(0, 100, (1, 16))
    model = edgeforge.load(
        Encoder().eval(),
        (ids, torch.ones_like(ids)),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
        },
        workdir=folder / "model",
    )
    data = folder / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        mask = np.ones((1, 16), np.int64)
        mask[0, rng.integers(5, 16) :] = 0  # padding: the attention mask's -inf stand-in is used
        ids = rng.integers(1, 100, (1, 16)) * mask
        np.savez(data / f"sentence-{i:02d}.npz", input_ids=ids, attention_mask=mask)
    return model, data
