"""Structured pruning: real channel removal that keeps dependencies, outputs and accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pass_data import as_samples
from torch import nn

import edgeforge
from edgeforge.errors import EdgeforgeError
from edgeforge.passes.prune import prune
from edgeforge.zoo.resnet import BasicBlock

DIGIT = torch.zeros(1, 1, 8, 8)


def test_half_the_digits_cnn_exports_and_keeps_its_accuracy(trained_digits, tmp_path):
    module, data, _ = trained_digits
    before = [p.clone() for p in module.parameters()]
    result = prune(
        module,
        DIGIT,
        ratio=0.5,
        data=as_samples(data.train_x, data.train_y),
        eval_data=as_samples(data.test_x, data.test_y),
        epochs=3,
    )
    assert result.parameters_kept <= 0.55
    assert sum(p.numel() for p in result.module.parameters()) == result.after.parameters
    assert result.after.macs < result.before.macs
    metrics = result.metrics
    # Measured: 97.8% before, 91.3% right after pruning, 99.1% after 3 epochs.
    assert metrics["finetuned_accuracy"] >= metrics["original_accuracy"] - 0.03
    assert metrics["finetuned_accuracy"] > metrics["pruned_accuracy"] - 0.01
    # The module given is untouched.
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    model = edgeforge.load(result.module, DIGIT, input_names=["image"], workdir=tmp_path)
    assert model.torch_parameters.parameters == result.after.parameters
    assert result.to_dict()["after"]["parameters"] == result.after.parameters


def test_unlabelled_data_fine_tunes_towards_the_unpruned_model(trained_digits):
    module, data, _ = trained_digits
    result = prune(
        module,
        DIGIT,
        ratio=0.5,
        data=as_samples(data.train_x),
        eval_data=as_samples(data.test_x, data.test_y),
        epochs=1,
    )
    assert "KL divergence" in result.notes[-1]
    assert result.metrics["finetuned_top1_agreement"] >= 0.95


class TinyResNet(nn.Module):
    """A stem, an identity residual block and a strided one with a 1x1 downsample."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def test_residual_adds_prune_both_branches_alike():
    torch.manual_seed(0)
    module = TinyResNet().eval()
    result = prune(module, torch.randn(1, 3, 16, 16), ratio=0.5)
    pruned = result.module
    identity, strided = pruned.blocks
    # An identity add ties the stem, the first block's output and the second block's input.
    assert pruned.stem[0].out_channels == identity.conv2.out_channels == identity.conv1.in_channels
    assert strided.conv2.out_channels == strided.downsample[0].out_channels
    assert strided.conv2.out_channels == pruned.head[2].in_features
    assert pruned.head[2].out_features == 5
    assert pruned(torch.randn(3, 3, 16, 16)).shape == (3, 5)
    assert result.parameters_kept <= 0.5


def test_depthwise_convolutions_keep_one_group_per_channel():
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 24, 1),
        nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1, groups=24),
        nn.BatchNorm2d(24),
        nn.Conv2d(24, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 4),
    ).eval()
    pruned = prune(module, torch.randn(1, 3, 8, 8), ratio=0.4, target="macs").module
    depthwise = pruned[2]
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels < 24
    assert pruned[0].out_channels == depthwise.in_channels
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(EdgeforgeError, match="between 0 and 1") as caught:
        prune(nn.Linear(4, 2), torch.zeros(1, 4), ratio=ratio)
    assert "\n" not in str(caught.value)


def test_data_of_the_wrong_shape_is_refused_before_pruning(trained_digits):
    module, data, _ = trained_digits
    flat = as_samples(data.train_x.reshape(len(data.train_x), 1, 64), data.train_y)
    with pytest.raises(EdgeforgeError, match=r"has shape \[1, 1, 64\].*\[batch, 1, 8, 8\]") as e:
        prune(module, DIGIT, ratio=0.5, data=flat)
    assert "\n" not in str(e.value)


def test_labels_that_do_not_match_the_samples_are_refused(trained_digits):
    module, data, _ = trained_digits
    with pytest.raises(EdgeforgeError, match="3 labels for 10 samples"):
        prune(module, DIGIT, data=as_samples(data.train_x[:10], data.train_y[:3]))


def test_a_module_whose_only_layer_is_the_output_cannot_be_pruned():
    with pytest.raises(EdgeforgeError, match="at most 0%"):
        prune(nn.Linear(4, 2), torch.zeros(1, 4), ratio=0.5)


def test_float_images_for_an_integer_input_are_refused():
    embed = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(32, 2)).eval()
    floats = as_samples(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(EdgeforgeError, match="is float32"):
        prune(embed, torch.zeros(1, 4, dtype=torch.long), data=floats)
