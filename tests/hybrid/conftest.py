"""Models the hybrid tests export once per session (no downloads)."""

from __future__ import annotations

import pytest
import torch
from hybrid_models import FeatureTransformer
from torch import nn

import edgeforge
from edgeforge.zoo import resnet18, transformer_encoder


def _export(module: nn.Module, example: torch.Tensor, name: str, folder) -> edgeforge.Model:
    torch.manual_seed(0)
    return edgeforge.load(
        module.eval(), example, input_names=[name], output_names=["logits"], workdir=folder
    )


@pytest.fixture(scope="session")
def cnn_model(tmp_path_factory) -> edgeforge.Model:
    torch.manual_seed(0)
    image = torch.randn(1, 3, 160, 160)
    return _export(resnet18(num_classes=10), image, "image", tmp_path_factory.mktemp("resnet18"))


@pytest.fixture(scope="session")
def frames_transformer(tmp_path_factory) -> edgeforge.Model:
    torch.manual_seed(0)
    frames = torch.randn(1, 128, 1024)
    folder = tmp_path_factory.mktemp("frames-transformer")
    return _export(FeatureTransformer(), frames, "frames", folder)


@pytest.fixture(scope="session")
def token_transformer(tmp_path_factory) -> edgeforge.Model:
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, 64))
    folder = tmp_path_factory.mktemp("token-transformer")
    return _export(transformer_encoder(max_seq=64), ids, "input_ids", folder)
