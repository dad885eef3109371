"""Layer-wise int8 sensitivity: a layer with a huge dynamic range ruins plain int8, ranks
first, and keeping it in float brings the agreement back within a few quantize runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import edgeforge
from edgeforge.errors import EdgeforgeError
from edgeforge.evaluate.data import Samples
from edgeforge.optimize.sensitivity import keep_float_until, mean_cosine, rank_nodes
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime


class OutlierChannel(nn.Module):
    """Six ReLU layers; the second writes one channel ~1000x larger than the others and the
    third scales it back down, so the float model is unharmed but a per-tensor int8 scale on
    that activation rounds every other channel to zero."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(16 if i == 0 else width, width) for i in range(6))
        self.head = nn.Linear(width, 10)
        with torch.no_grad():
            for layer in [*self.layers, self.head]:
                # Variance-preserving weights: the logits' arg-max depends on the input.
                nn.init.kaiming_normal_(layer.weight)
                nn.init.zeros_(layer.bias)
            self.layers[1].weight[0] *= 1000
            self.layers[1].bias[0] += 1000
            self.layers[2].weight[:, 0] /= 1000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("outlier")
    model = edgeforge.load(
        OutlierChannel().eval(),
        torch.randn(1, 16),
        input_names=["x"],
        output_names=["logits"],
        workdir=folder / "model",
    )
    inputs = np.random.default_rng(0).standard_normal((128, 1, 16)).astype(np.float32)
    data = folder / "data"
    data.mkdir()
    np.save(data / "x.npy", inputs[:, 0])  # load_data gives each sample a batch axis of 1
    return model, Samples([{"x": x} for x in inputs]), str(data)


def test_excluding_the_outlier_layer_restores_agreement(outlier, tmp_path):
    model, samples, data = outlier
    recipe = Recipe("int8-static", {"data": data, "calibration_samples": 128})
    result = keep_float_until(model, recipe, samples, limit=0.95)

    assert result.metric_before < 0.5, "plain int8 should be ruined by the outlier channel"
    assert result.met and result.metric_after >= 0.95
    assert 1 <= len(result.excluded) <= 3  # the outlier's producer and consumer, not everything
    assert len(result.excluded) < len(result.ranking)
    assert result.recipe.options["nodes_to_exclude"] == result.excluded
    # Rank once, then 1, 2, ... nodes: bounded by about 2 log2(n) + 2 runs.
    assert result.quantize_runs <= 2 * math.ceil(math.log2(len(result.ranking))) + 2
    assert result.to_dict()["recipe"]["precision"] == "int8-static"

    # The final recipe, built through the runtime, reproduces what was measured.
    artifact = get_runtime("onnxruntime").build(model, result.recipe, tmp_path / "int8")
    import onnxruntime as ort

    reference = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    with get_runtime("onnxruntime").open(artifact) as session:
        got = [session.run(feed)["logits"].argmax() for feed in samples.feeds]
    want = [reference.run(None, feed)[0].argmax() for feed in samples.feeds]
    assert np.mean(np.equal(got, want)) >= 0.95


def test_the_outlier_activation_ranks_first(outlier):
    model, samples, _ = outlier
    ranking = rank_nodes(model, Recipe("int8-static"), samples)
    worst = ranking[0]
    assert worst.sqnr_db < 0 < ranking[-1].sqnr_db  # the step exceeds the typical value
    # The outlier tensor is the second layer's output, shared by its producer and consumer.
    assert sum(r.tensor == worst.tensor for r in ranking) == 2


def test_a_model_that_already_meets_the_limit_excludes_nothing(outlier):
    model, samples, _ = outlier
    result = keep_float_until(model, Recipe("int8-static"), samples, mean_cosine, limit=-1.0)
    assert result.excluded == [] and result.quantize_runs == 1
    assert "nodes_to_exclude" not in result.recipe.options


def test_sensitivity_of_another_precision_is_refused(outlier):
    model, samples, _ = outlier
    with pytest.raises(EdgeforgeError, match="int8-static"):
        keep_float_until(model, Recipe("int8-dynamic"), samples)
