"""Arithmetic work per ONNX node: multiply-accumulates (MACs) and floating-point operations.

Conventions (what a caller can rely on):
- MACs are counted for the ops that multiply and accumulate: Conv, ConvTranspose, Gemm, MatMul
  (and their quantized and contrib forms), Einsum, attention and the recurrent LSTM/GRU/RNN.
  FLOPs of those are 2 x MACs plus one per output element for a bias.
- Elementwise ops cost one FLOP per output element (transcendentals such as Exp or Erf too, which
  undercounts them on real hardware); n-ary Sum/Max/Min/Mean cost n-1 per element.
- Pooling costs one FLOP per window element per output; global pooling and reductions one per
  input element; BatchNormalization 2 per element (scale and shift); Layer/Group/Instance/RMS
  normalisation 5 per element (mean, centre, variance, normalise, affine); Softmax 3 per element.
- Data movement (Reshape, Transpose, Gather, Concat, Slice, Cast...) costs zero FLOPs and is
  listed as such. Ops without a rule, ops inside control flow, and nodes whose shapes are unknown
  are "not counted" and reported by name, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import onnx

__all__ = ["CATEGORIES", "NodeCost", "UnknownShape", "node_cost"]

Shape = tuple[int, ...]


class UnknownShape(Exception):
    """A shape the rule needs was not inferred."""


@dataclass(frozen=True)
class NodeCost:
    macs: int
    flops: int
    category: str


@dataclass
class _Node:
    node: onnx.NodeProto
    ins: list[Shape | None]
    outs: list[Shape | None]

    def attr(self, name: str, default=None):
        for a in self.node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def input(self, i: int) -> Shape:
        if i >= len(self.ins) or self.ins[i] is None:
            raise UnknownShape(self.node.input[i] if i < len(self.node.input) else f"input {i}")
        return self.ins[i]  # type: ignore[return-value]

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i])

    def output(self, i: int = 0) -> Shape:
        if i >= len(self.outs) or self.outs[i] is None:
            raise UnknownShape(self.node.output[i] if i < len(self.node.output) else f"output {i}")
        return self.outs[i]  # type: ignore[return-value]


def _numel(shape: Shape) -> int:
    return math.prod(shape)


def _conv(n: _Node) -> tuple[int, int]:
    w = n.input(1)  # (Cout, Cin/group, k...)
    out = n.output()
    macs = _numel(out) * _numel(w[1:])
    bias = _numel(out) if n.has_input(2) else 0
    return macs, 2 * macs + bias


def _conv_transpose(n: _Node) -> tuple[int, int]:
    x = n.input(0)  # (N, Cin, spatial...)
    w = n.input(1)  # (Cin, Cout/group, k...)
    macs = _numel(x) * _numel(w[1:])
    bias = _numel(n.output()) if n.has_input(2) else 0
    return macs, 2 * macs + bias


def _gemm(n: _Node) -> tuple[int, int]:
    a, b = n.input(0), n.input(1)
    m, k = (a[1], a[0]) if n.attr("transA", 0) else (a[0], a[1])
    cols = b[0] if n.attr("transB", 0) else b[1]
    macs = m * k * cols
    bias = m * cols if n.has_input(2) else 0
    return macs, 2 * macs + bias


def _matmul(n: _Node) -> tuple[int, int]:
    a = n.input(0)
    out = n.output()
    k = a[-1]
    macs = _numel(out) * k
    return macs, 2 * macs


def _matmul_nbits(n: _Node) -> tuple[int, int]:
    # com.microsoft MatMulNBits: B is packed, K is an attribute.
    out = n.output()
    macs = _numel(out) * int(n.attr("K"))
    return macs, 2 * macs + (_numel(out) if n.has_input(5) else 0)


def _einsum(n: _Node) -> tuple[int, int]:
    """MACs = the product of every index size (for two operands; n-1 times that for n)."""
    equation = n.attr("equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    terms = equation.replace(" ", "").partition("->")[0].split(",")
    sizes: dict[str, int] = {}
    for i, term in enumerate(terms):
        shape = n.input(i)
        for label, size in zip(_einsum_labels(term, len(shape)), shape, strict=True):
            sizes[label] = max(sizes.get(label, 1), size)
    product = math.prod(sizes.values())
    if len(terms) == 1:
        return 0, product
    macs = product * (len(terms) - 1)
    return macs, 2 * macs


def _einsum_labels(term: str, rank: int) -> list[str]:
    if "..." not in term:
        return list(term)
    before, _, after = term.partition("...")
    broadcast = rank - len(before) - len(after)
    return [*before, *(f"...{i}" for i in range(broadcast)), *after]


def _attention(n: _Node) -> tuple[int, int]:
    """ONNX Attention (opset 23): Q (B, Hq, S, D) or (B, S, Hq*D); K (B, Hkv, L, D)."""
    q, k, v = n.input(0), n.input(1), n.input(2)
    if len(q) == 4:
        batch, heads, seq, head_dim = q
        kv_len, v_dim = k[2], v[3]
    else:
        heads = int(n.attr("q_num_heads"))
        batch, seq, hidden = q
        head_dim = hidden // heads
        kv_len, v_dim = k[1], v[2] // int(n.attr("kv_num_heads", heads))
    macs = batch * heads * seq * kv_len * (head_dim + v_dim)
    softmax = 3 * batch * heads * seq * kv_len
    return macs, 2 * macs + softmax


def _contrib_attention(n: _Node) -> tuple[int, int]:
    """com.microsoft Attention: input (B, S, H_in), packed QKV weights (H_in, 3*H)."""
    x, w = n.input(0), n.input(1)
    batch, seq, _ = x
    heads = int(n.attr("num_heads"))
    hidden = w[1] // 3
    projection = batch * seq * w[0] * w[1]
    scores = 2 * batch * heads * seq * seq * (hidden // heads)
    macs = projection + scores
    return macs, 2 * macs + 3 * batch * heads * seq * seq


def _multi_head_attention(n: _Node) -> tuple[int, int]:
    """com.microsoft MultiHeadAttention: Q (B, S, H), K/V (B, L, H) after projection."""
    q, k = n.input(0), n.input(1)
    heads = int(n.attr("num_heads"))
    batch, seq, hidden = q
    kv_len = k[1] if len(k) == 3 else k[2]
    macs = 2 * batch * seq * kv_len * hidden
    return macs, 2 * macs + 3 * batch * heads * seq * kv_len


def _recurrent(n: _Node) -> tuple[int, int]:
    """ONNX LSTM/GRU/RNN: every step multiplies the input by W and the state by R.

    MACs = steps x batch x (elements of W + elements of R); FLOPs add the biases and about
    ten elementwise operations per hidden unit and step for the gates."""
    x, w, r = n.input(0), n.input(1), n.input(2)
    steps, batch = (x[1], x[0]) if n.attr("layout", 0) else (x[0], x[1])
    directions, hidden = w[0], r[2]
    macs = steps * batch * (_numel(w) + _numel(r))
    bias = steps * batch * _numel(n.input(3)) if n.has_input(3) else 0
    gates = 10 * steps * batch * directions * hidden
    return macs, 2 * macs + bias + gates


def _per_output(cost: int) -> Callable[[_Node], tuple[int, int]]:
    return lambda n: (0, cost * _numel(n.output()))


def _per_input(cost: int) -> Callable[[_Node], tuple[int, int]]:
    return lambda n: (0, cost * _numel(n.input(0)))


def _nary(n: _Node) -> tuple[int, int]:
    return 0, max(1, len(n.node.input) - 1) * _numel(n.output())


def _pool(n: _Node) -> tuple[int, int]:
    return 0, _numel(n.output()) * math.prod(n.attr("kernel_shape"))


def _zero(n: _Node) -> tuple[int, int]:
    return 0, 0


_ELEMENTWISE = (
    "Add Sub Mul Div Pow Sqrt Exp Log Neg Abs Reciprocal Floor Ceil Round Sign Relu LeakyRelu "
    "PRelu Elu Selu Celu Sigmoid HardSigmoid HardSwish Tanh Erf Gelu FastGelu BiasGelu "
    "QuickGelu Mish Softplus Softsign Clip Sin Cos Tan Where Equal Less Greater LessOrEqual "
    "GreaterOrEqual And Or Xor Not Mod IsNaN IsInf ThresholdedRelu Shrink BitShift"
).split()
_DATA_MOVEMENT = (
    "Reshape Transpose Flatten Squeeze Unsqueeze Concat Split Slice Gather GatherElements "
    "GatherND Scatter ScatterElements ScatterND Expand Tile Pad Identity Cast CastLike Shape "
    "Size Constant ConstantOfShape Range DepthToSpace SpaceToDepth Dropout NonZero TopK "
    "ArgMax ArgMin OneHot Trilu EyeLike QuantizeLinear DequantizeLinear DynamicQuantizeLinear "
    "Compress SequenceConstruct SplitToSequence ConcatFromSequence"
).split()

_REDUCTIONS = (
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 "
    "ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare CumSum"
).split()

# op_type -> (category, rule). Domains are matched by op_type alone (contrib names do not
# collide with standard ones), except the contrib Attention in _CONTRIB below.
_RULES: dict[str, tuple[str, Callable[[_Node], tuple[int, int]]]] = {
    "Conv": ("conv", _conv),
    "ConvInteger": ("conv", _conv),
    "FusedConv": ("conv", _conv),
    "ConvTranspose": ("conv", _conv_transpose),
    "Gemm": ("matmul", _gemm),
    "MatMul": ("matmul", _matmul),
    "MatMulInteger": ("matmul", _matmul),
    "FusedMatMul": ("matmul", _matmul),
    "MatMulNBits": ("matmul", _matmul_nbits),
    "Einsum": ("matmul", _einsum),
    "Attention": ("attention", _attention),
    "MultiHeadAttention": ("attention", _multi_head_attention),
    "LSTM": ("recurrent", _recurrent),
    "GRU": ("recurrent", _recurrent),
    "RNN": ("recurrent", _recurrent),
    "MaxPool": ("pooling", _pool),
    "AveragePool": ("pooling", _pool),
    "LpPool": ("pooling", _pool),
    "GlobalAveragePool": ("pooling", _per_input(1)),
    "GlobalMaxPool": ("pooling", _per_input(1)),
    "GlobalLpPool": ("pooling", _per_input(1)),
    "BatchNormalization": ("normalization", _per_output(2)),
    "LayerNormalization": ("normalization", _per_output(5)),
    "SimplifiedLayerNormalization": ("normalization", _per_output(4)),
    "SkipLayerNormalization": ("normalization", _per_output(6)),
    "RMSNormalization": ("normalization", _per_output(4)),
    "GroupNormalization": ("normalization", _per_output(5)),
    "InstanceNormalization": ("normalization", _per_output(5)),
    "LRN": ("normalization", _per_output(5)),
    "Softmax": ("softmax", _per_output(3)),
    "LogSoftmax": ("softmax", _per_output(4)),
    "Sum": ("elementwise", _nary),
    "Max": ("elementwise", _nary),
    "Min": ("elementwise", _nary),
    "Mean": ("elementwise", _nary),
    **{op: ("elementwise", _per_output(1)) for op in _ELEMENTWISE},
    **{op: ("reduction", _per_input(1)) for op in _REDUCTIONS},
    **{op: ("data movement", _zero) for op in _DATA_MOVEMENT},
}
# The standard Attention has a com.microsoft namesake with another signature.
_CONTRIB = {("com.microsoft", "Attention"): ("attention", _contrib_attention)}

CATEGORIES = (
    "conv",
    "matmul",
    "attention",
    "recurrent",
    "pooling",
    "normalization",
    "softmax",
    "elementwise",
    "reduction",
    "data movement",
)


def node_cost(
    node: onnx.NodeProto, ins: list[Shape | None], outs: list[Shape | None]
) -> NodeCost | None:
    """MACs and FLOPs of one node, or None when no rule covers its op.

    Raises UnknownShape when a rule exists but a shape it needs was not inferred.
    """
    rule = _CONTRIB.get((node.domain, node.op_type)) or _RULES.get(node.op_type)
    if rule is None:
        return None
    category, count = rule
    macs, flops = count(_Node(node, ins, outs))
    return NodeCost(int(macs), int(flops), category)
