"""Rewrites of a torch.export program before ExecuTorch lowers it, for ops whose lowering or
kernels fail although the model is plain (issue 18, class 5).

Each is a decomposition handed to `ExportedProgram.run_decompositions`; it returns
`NotImplemented` for the cases ExecuTorch handles itself, so those nodes stay as they were.

- `conv3d` on a 5-D input (VideoMAE's and other video models' tubelet embedding): XNNPACK does
  not take 3-D convolutions and the portable `convolution.out` kernel checks for a 3-D or 4-D
  input, so the program built but failed when run (error 0x12, no op named). A 3-D convolution
  is the sum over its temporal kernel taps of 2-D convolutions of strided frame slices, with
  the frames folded into the batch: `kT` `conv2d`s that XNNPACK runs.
- `prelu` on an input that is not 4-D (MTCNN's PReLU after a fully connected layer):
  XNNPACK's partitioner takes it, then its channels-last pass asserts ("non-NHWC compatible
  node"). It becomes `clamp(x, 0) + alpha * clamp(x, max=0)`, alpha along axis 1.

`rewritten(program)` returns the program unchanged when neither applies, and the names of the
rewrites it applied otherwise, for the artifact's notes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["rewritten"]


def rewritten(program: Any) -> tuple[Any, list[str]]:
    """(program, notes): the program with the rewrites applied where they apply."""
    import torch

    aten = torch.ops.aten
    applied = []
    for node in program.graph.nodes:
        if node.op != "call_function" or not node.args:
            continue
        first = getattr(node.args[0], "meta", {}).get("val")  # args may be ints and lists
        if not isinstance(first, torch.Tensor):
            continue
        if node.target == aten.conv3d.default and first.dim() == 5:
            applied.append("conv3d")
        elif node.target == aten.prelu.default and first.dim() != 4:
            applied.append("prelu")
    if not applied:
        return program, []
    table = {aten.conv3d.default: _conv3d, aten.prelu.default: _prelu}
    notes = []
    if "conv3d" in applied:
        notes.append(
            f"{applied.count('conv3d')} 3-D convolution(s) rewritten as sums of 2-D "
            "convolutions over the temporal kernel (ExecuTorch's kernels take 2-D ones only)"
        )
    if "prelu" in applied:
        notes.append(
            f"{applied.count('prelu')} PReLU(s) on non-4-D inputs rewritten as "
            "clamp(x, 0) + alpha * clamp(x, max=0) (XNNPACK's channels-last pass asserts on them)"
        )
    return program.run_decompositions(table), notes


def _triple(value: Any) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return values * 3 if len(values) == 1 else values


def _conv3d(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> Any:
    import torch

    aten = torch.ops.aten
    if x.dim() != 5 or isinstance(padding, str):
        return NotImplemented
    (s_t, s_h, s_w), (p_t, p_h, p_w) = _triple(stride), _triple(padding)
    d_t, d_h, d_w = _triple(dilation)
    if p_t:
        x = aten.constant_pad_nd.default(x, [0, 0, 0, 0, p_t, p_t])
    batch, channels, frames, height, width = x.shape
    taps = weight.shape[2]
    out_frames = (frames - d_t * (taps - 1) - 1) // s_t + 1
    total = None
    for tap in range(taps):
        start = tap * d_t
        picked = x[:, :, start : start + s_t * (out_frames - 1) + 1 : s_t]
        folded = picked.permute(0, 2, 1, 3, 4).reshape(batch * out_frames, channels, height, width)
        part = aten.conv2d.default(
            folded, weight[:, :, tap], None, [s_h, s_w], [p_h, p_w], [d_h, d_w], groups
        )
        total = part if total is None else total + part
    assert total is not None
    out = total.reshape(batch, out_frames, *total.shape[1:]).permute(0, 2, 1, 3, 4)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1, 1)
    return out


def _prelu(x: Any, alpha: Any) -> Any:
    import torch

    if x.dim() == 4:
        return NotImplemented
    aten = torch.ops.aten
    if alpha.numel() > 1:
        alpha = alpha.reshape([-1] + [1] * (x.dim() - 2))
    return aten.clamp.default(x, 0) + aten.clamp.default(x, None, 0) * alpha
