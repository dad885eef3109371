"""Models the tests build themselves (no downloads): exported once per session."""

from __future__ import annotations

import pytest
import torch

import edgeforge
from edgeforge.zoo import DigitsCNN, resnet50


@pytest.fixture(scope="session")
def digits_module() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN().eval()


@pytest.fixture(scope="session")
def digits_model(digits_module, tmp_path_factory) -> edgeforge.Model:
    return edgeforge.load(
        digits_module,
        torch.randn(1, 1, 8, 8),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
        workdir=tmp_path_factory.mktemp("digits"),
    )


@pytest.fixture(scope="session")
def resnet50_profile(tmp_path_factory) -> tuple[edgeforge.Profile, torch.nn.Module]:
    torch.manual_seed(0)
    module = resnet50().eval()
    profile = edgeforge.inspect(
        module, torch.randn(1, 3, 224, 224), workdir=tmp_path_factory.mktemp("resnet50")
    )
    return profile, module


@pytest.fixture(scope="session")
def bert_base_profile(tmp_path_factory) -> tuple[edgeforge.Profile, torch.nn.Module]:
    """BERT-base (12 layers, hidden 768) from its config, random weights, sequence 128."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig()
    module = BertModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 128))
    profile = edgeforge.inspect(
        module,
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
        },
        workdir=tmp_path_factory.mktemp("bert"),
    )
    return profile, module


@pytest.fixture
def five_class_images(tmp_path):
    """5 classes x 20 grey 8x8 PNGs in class sub-folders: the first 64 files in sorted order
    hold only classes 0-3, so reading "the first 64" loses a class."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in range(5):
        (folder / f"class{label}").mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"class{label}" / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="session")
def digits_factory(tmp_path_factory) -> str:
    """The digits CNN as a user hands it to the CLI: a 'file.py:factory' reference whose
    factory returns (module, example inputs, export options); it carries a torch program, so
    every runtime can build it."""
    path = tmp_path_factory.mktemp("factory") / "digits_factory.py"
    path.write_text(
        "import torch\n"
        "from edgeforge.zoo import DigitsCNN\n\n\n"
        "def digits():\n"
        "    torch.manual_seed(0)\n"
        "    options = {'input_names': ['image'], 'output_names': ['logits'],\n"
        "               'dynamic_axes': {'image': {0: 'batch'}}}\n"
        "    return DigitsCNN().eval(), torch.randn(1, 1, 8, 8), options\n"
    )
    return f"{path}:digits"
