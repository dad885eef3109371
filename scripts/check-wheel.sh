#!/usr/bin/env bash
# Is edgeforge installable outside the repository? Build a wheel from this checkout, install it
# into fresh venvs (base, then + openvino, then + torch) and run the verbs from a folder under
# /tmp, with a model made by onnx alone: inspect, convert (onnxruntime; web after `edgeforge setup
# web`; openvino with its extra), estimate, the Python API, calibrate --validate-only (without
# torch, then with it: the same figures). Measures each install's size (du of site-packages).
#
#   scripts/check-wheel.sh [--all]     # --all: also a fresh venv with [all], for its size
#
# Writes what it ran and printed to bench/results/wheel_check.txt. Every pip install is
# constrained by constraints.txt (the CPU build of torch 2.13.0). Minutes, mostly pip.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
WORK=$(mktemp -d /tmp/edgeforge-wheel.XXXXXX)
RESULT="$REPO/bench/results/wheel_check.txt"
ALL=${1:-}

say() { printf '\n$ %s\n' "$*"; }
# Run a command, show it and its output; a non-zero status is shown, not fatal (some steps
# check that a verb refuses cleanly).
run() { say "$*"; "$@" 2>&1 || echo "(exit status $?)"; }
calibration_summary() {
    say "edgeforge calibrate --validate-only --json  $1"
    local started=$SECONDS
    edgeforge calibrate --validate-only --json | python -c "import json, sys
d = json.load(sys.stdin)
print(d['schema'], d['mode'], 'rows file:', d['rows_file'])
print('overall:', d['overall'])"
    echo "($((SECONDS - started)) s)"
}
site_mb() { du -sm "$1"/lib/python3*/site-packages | cut -f1; }
install() { "$1/bin/python" -m pip install -qq -c "$REPO/constraints.txt" "${@:2}"; }

check() {
    echo "# scripts/check-wheel.sh $ALL — $(date -u +%Y-%m-%dT%H:%MZ), $("$PYTHON" --version)"
    "$PYTHON" -m pip wheel -qq --no-deps "$REPO" -w "$WORK/dist"
    WHEEL=$(ls "$WORK"/dist/edgeforge-*.whl)
    echo "wheel: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KB)"

    "$PYTHON" -m venv "$WORK/base"
    install "$WORK/base" "$WHEEL"
    echo "installed: pip install $(basename "$WHEEL") -c constraints.txt"
    echo "size, base: $(site_mb "$WORK/base") MB (du -sm $WORK/base/lib/python3*/site-packages)"
    export PATH="$WORK/base/bin:$PATH"
    mkdir -p "$WORK/run" && cd "$WORK/run"
    echo "running in $PWD (no repository here)"
    python - <<'PY'
import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np

rng = np.random.default_rng(0)
weights = [
    numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "conv.w"),
    numpy_helper.from_array(rng.standard_normal((4, 10)).astype(np.float32), "fc.w"),
]
nodes = [
    helper.make_node("Conv", ["image", "conv.w"], ["c"], pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["c"], ["r"]),
    helper.make_node("GlobalAveragePool", ["r"], ["p"]),
    helper.make_node("Flatten", ["p"], ["f"]),
    helper.make_node("MatMul", ["f", "fc.w"], ["logits"]),
]
graph = helper.make_graph(
    nodes,
    "tiny",
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    weights,
)
# IR version 10, as torch's exporter writes: onnxruntime-web 1.30 reads IR <= 13, and onnx 1.23
# writes 14 by default.
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
onnx.checker.check_model(model)
onnx.save(model, "tiny.onnx")
print("made tiny.onnx with onnx alone")
PY
    run edgeforge --version
    run edgeforge devices jetson-orin-nano
    run edgeforge inspect tiny.onnx --top 3
    run edgeforge convert tiny.onnx --runtime onnxruntime --out out-base
    run edgeforge convert tiny.onnx --runtime openvino --out out-openvino-missing
    run edgeforge estimate tiny.onnx --device jetson-orin-nano
    run python -c "import sys, edgeforge
p = edgeforge.inspect('tiny.onnx')
e = edgeforge.estimate('tiny.onnx', 'jetson-orin-nano')
c = edgeforge.convert('tiny.onnx', 'onnxruntime', 'out-api')
print('API: macs', p.macs, '| jetson-orin-nano', round(e.latency_ms, 4), 'ms | verified',
      c.all_verified, '| torch imported:', 'torch' in sys.modules)"
    calibration_summary "(base: the zoo profiles shipped in the package)"
    run edgeforge inspect edgeforge.zoo.catalog:squeezenet1_1
    run edgeforge setup web --dir "$WORK/web"
    run env EDGEFORGE_WEB_DIR="$WORK/web" edgeforge convert tiny.onnx --runtime web --out out-web

    install "$WORK/base" "$WHEEL[openvino]"
    echo
    echo "size, base + [openvino]: $(site_mb "$WORK/base") MB"
    run edgeforge convert tiny.onnx --runtime onnxruntime,openvino --out out-openvino

    install "$WORK/base" "$WHEEL[torch]"
    echo
    echo "size, base + [openvino,torch]: $(site_mb "$WORK/base") MB"
    calibration_summary "(with torch: the zoo built and exported afresh)"
    say "edgeforge inspect edgeforge.zoo.catalog:squeezenet1_1 --json  (summary)"
    edgeforge inspect edgeforge.zoo.catalog:squeezenet1_1 --json | python -c "import json, sys
d = json.load(sys.stdin)
print(d['schema'], 'MACs', d['macs'], 'torch parameters', d['model']['torch_parameters'])"

    if [ "$ALL" = "--all" ]; then
        "$PYTHON" -m venv "$WORK/all"
        install "$WORK/all" "$WHEEL[all]"
        echo
        echo "size, [all]: $(site_mb "$WORK/all") MB (du -sm $WORK/all/lib/python3*/site-packages)"
        say "each runtime's availability in [all]"
        "$WORK/all/bin/python" -c "from edgeforge.runtimes import get_runtime, runtime_names
for name in runtime_names():
    a = get_runtime(name).availability()
    print(f'{name:20}', 'runs here' if a.can_execute else f'not here: {a.reason}')" 2>&1
    fi
}

check 2>&1 | tee "$RESULT"
rm -rf "$WORK"
echo "wrote $RESULT"
