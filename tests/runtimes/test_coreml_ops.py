"""Core ML translations edgeforge registers for ATen ops coremltools 9 lacks (issue 18, class 6),
and coremltools' own ones it widens to booleans (`gather`, `sum`).

One module uses every one of them; it must convert, and the package must pass the signature
validation. Off macOS the package cannot be run: prediction is tested on macOS only.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeforge
from edgeforge.recipe import Recipe
from edgeforge.runtimes import get_runtime

ct = pytest.importorskip("coremltools")

from edgeforge.runtimes._coreml_ops import REGISTERED, WIDENED, bicubic_matrix, unfold_plan  # noqa: E402
from edgeforge.runtimes.coreml import _coremltools, validate_without_running  # noqa: E402

# The ops the program below must contain, so that each translation is exercised.
TRANSLATED = {
    "aten.new_ones.default",
    "aten.diff.default",
    "aten.upsample_bicubic2d.vec",
    "aten.where.ScalarOther",
    "aten.__and__.Tensor",
    "aten.alias.default",
    "aten.prelu.default",
    "aten.gather.default",
    "aten.unfold.default",
    "aten.sum.dim_IntList",
}


class EveryTranslatedOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.prelu = nn.PReLU(6)  # per-channel alpha on a rank-2 input, as MTCNN's RNet has
        self.register_buffer("order", torch.arange(5, -1, -1)[None])

    def forward(self, image: torch.Tensor, rows: torch.Tensor):
        big = F.interpolate(image, scale_factor=2, mode="bicubic", align_corners=False)
        steps = torch.diff(rows, dim=-1)
        inside = (rows > 0) & (rows < 1)
        kept = torch.where(inside, rows, 0.5) + rows.new_ones(rows.shape)
        # A keep-mask gathered into another order and counted, as a detector's tail does.
        counts = inside.gather(1, self.order.expand(rows.shape[0], -1)).sum(1)
        windows = rows.unfold(1, 3, 2)  # sliding windows, as PatchTST patches a series
        return big, torch.ops.aten.alias(steps) * 2, self.prelu(kept), counts, windows


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def every_op(tmp_path_factory):
    torch.manual_seed(0)
    inputs = (torch.randn(1, 3, 6, 5), torch.randn(4, 6))
    model = edgeforge.load(
        EveryTranslatedOp().eval(), inputs, workdir=tmp_path_factory.mktemp("every-op")
    )
    return model, inputs


def test_the_translations_are_registered_through_coremltools_registry():
    _coremltools()
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    for name in ("new_ones", "diff", "upsample_bicubic2d.vec", "where.scalarother", "__and__"):
        assert name in _TORCH_OPS_REGISTRY.name_to_func_mapping
    assert set(REGISTERED) >= {"alias", "_prelu_kernel", "new_ones", "__and__", "unfold"}
    assert set(WIDENED) == {"gather", "sum", "sum.dim_intlist"}


@pytest.mark.slow
def test_every_translated_op_converts_and_the_package_validates(every_op, tmp_path):
    model, _ = every_op
    program = torch.export.load(model.torch_program).run_decompositions({})
    present = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert present >= TRANSLATED, TRANSLATED - present
    coreml = get_runtime("coreml")
    findings = [f for f in coreml.check(model) if f.severity == "unsupported"]
    assert findings == []
    artifact = coreml.build(model, Recipe("fp32"), tmp_path / "cm")
    assert validate_without_running(artifact) == []
    ops = {op.type for block in _blocks(artifact) for op in block.operations}
    # (fill and prelu are folded into constants and other ops by coremltools passes)
    assert {"matmul", "select", "logical_and", "slice_by_index", "gather_along_axis"} <= ops
    assert {"gather", "transpose"} <= ops  # unfold


def _blocks(artifact):
    spec = ct.models.MLModel(str(artifact.path), skip_model_load=True).get_spec()
    for function in spec.mlProgram.functions.values():
        yield from function.block_specializations.values()


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction runs only on macOS")
def test_every_translated_op_predicts_what_torch_computes(every_op, tmp_path):
    model, inputs = every_op
    coreml = get_runtime("coreml")
    artifact = coreml.build(model, Recipe("fp32"), tmp_path / "cm")
    feeds = {spec.name: t.numpy() for spec, t in zip(model.inputs, inputs, strict=True)}
    with coreml.open(artifact) as session:
        got = session.run(feeds)
    want = EveryTranslatedOp().eval()(*inputs)
    for spec, expected in zip(model.outputs, want, strict=True):
        np.testing.assert_allclose(got[spec.name], expected.detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("align_corners", [False, True])
def test_bicubic_as_two_matrices_is_what_torch_computes(align_corners):
    """The translation's arithmetic, run in numpy: rows @ x @ columns.T is torch's resize."""
    image = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    want = F.interpolate(image, scale_factor=(2, 3), mode="bicubic", align_corners=align_corners)
    rows = bicubic_matrix(6, None, [2.0, 3.0], align_corners, axis=0)
    columns = bicubic_matrix(5, None, [2.0, 3.0], align_corners, axis=1)
    np.testing.assert_allclose(rows @ image.numpy() @ columns.T, want.numpy(), atol=1e-10)
    sized = bicubic_matrix(6, [9, 7], None, align_corners, axis=0)
    want = F.interpolate(image, size=(9, 7), mode="bicubic", align_corners=align_corners)
    got = sized @ image.numpy() @ bicubic_matrix(5, [9, 7], None, align_corners, axis=1).T
    np.testing.assert_allclose(got, want.numpy(), atol=1e-10)


@pytest.mark.parametrize(
    ("shape", "dim", "size", "step"), [((4, 6), 1, 3, 2), ((2, 9, 3), 1, 4, 4)]
)
def test_unfold_as_a_gather_and_a_transpose_is_what_torch_computes(shape, dim, size, step):
    """The translation's arithmetic, run in numpy: take the windows, move their axis last."""
    x = torch.randn(*shape)
    indices, order = unfold_plan(shape[dim], size, step, dim, len(shape))
    got = np.take(x.numpy(), indices, axis=dim).transpose(order)
    np.testing.assert_array_equal(got, x.unfold(dim, size, step).numpy())
