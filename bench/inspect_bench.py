"""How long `inspect` takes and how much memory it needs, on models of growing size.

Each measurement runs `edgeforge.inspect` in a fresh child process and records wall time and
the child's peak resident memory. The 1 GiB case is a MatMul whose weights live in a sparse
external-data file, so it costs no disk and shows that weights are never read.

    .venv/bin/python bench/inspect_bench.py [--out bench/results/inspect.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import onnx
from onnx import TensorProto, helper

_CHILD = textwrap.dedent(
    """
    import json, sys, time

    def _peak_rss_kb():  # VmHWM starts afresh at exec, unlike ru_maxrss
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])

    started = time.perf_counter()
    import edgeforge
    profile = edgeforge.inspect(sys.argv[1])
    print(json.dumps({
        "seconds": time.perf_counter() - started,
        "inspect_seconds": profile.seconds,
        "peak_rss_mb": _peak_rss_kb() / 1024,
        "macs": profile.macs,
        "weight_elements": profile.weights["onnx_elements"],
        "weight_bytes": profile.weights["bytes"],
    }))
    """
)


def _external_matmul(folder: Path, rows: int) -> Path:
    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[rows, 1024])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(rows * 4096))):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1024])],
        [weight],
    )
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    with open(folder / "w.bin", "wb") as handle:
        handle.truncate(rows * 4096)
    return path


def _torch_model(folder: Path, name: str) -> Path:
    import torch

    import edgeforge
    from edgeforge.zoo import resnet50

    if name == "resnet50":
        module, inputs = resnet50().eval(), torch.randn(1, 3, 224, 224)
    else:
        from transformers import BertConfig, BertModel

        module = BertModel(BertConfig()).eval()
        ids = torch.randint(0, 30522, (1, 128))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return edgeforge.load(module, inputs, workdir=folder).onnx_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/inspect.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        cases = {
            "resnet50 (102 MB inline)": lambda d: _torch_model(d, "resnet50"),
            "bert-base seq128 (438 MB inline)": lambda d: _torch_model(d, "bert"),
            "matmul 1 GiB external": lambda d: _external_matmul(d, 262144),
            "matmul 4 GiB external": lambda d: _external_matmul(d, 1048576),
        }
        for name, build in cases.items():
            folder = root / name.split()[0] / name.split()[1]
            folder.mkdir(parents=True)
            path = build(folder)
            child = subprocess.run(
                [sys.executable, "-c", _CHILD, str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            row = {"case": name, **json.loads(child.stdout.strip().splitlines()[-1])}
            results.append(row)
            print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": platform.platform(), "results": results}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
