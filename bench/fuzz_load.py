"""Fuzz `load`, `inspect` and `verify` with mutated ONNX files and `--data` folders (issue 13).

Hypothesis draws the mutations: structured ones on the ONNX protobuf (dims, op types,
attributes, initializer bytes and types, node wiring, opsets, external-data locations, huge
constant shapes and loop counts) and byte-level ones on the serialised file; and, for `verify`,
on the `--data` folder (dtypes, shapes, truncated and foreign files). Each case runs in a worker
process held to a memory budget (RLIMIT_AS, via `edgeforge._limits.apply_child_limits`) and a
time limit (the worker is killed and restarted when a case overruns).

Every outcome must be a result or a one-line `edgeforge: error:`; anything else is a crash:
an internal error, a traceback, a hang (past the time limit), a memory blow-up (MemoryError or
a killed worker). Unique crashes (by verb, kind and normalised message) are saved with their
reproducer under `bench/results/fuzz_crashes/`; the figures go to `bench/results/fuzz_load.json`.

    .venv/bin/python bench/fuzz_load.py --minutes 30 [--case-timeout 30] [--memory BYTES]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException
from onnx import TensorProto, helper, numpy_helper

RESULTS = Path(__file__).resolve().parent / "results"
VERBS = ("load", "inspect", "verify")
_OPS = [
    "Relu",
    "MatMul",
    "Add",
    "Conv",
    "Reshape",
    "Loop",
    "If",
    "NonZero",
    "ConstantOfShape",
    "Expand",
    "Tile",
    "Range",
    "Resize",
    "Gather",
    "Concat",
    "Slice",
    "TopK",
    "Foo",
]
_INTS = st.one_of(
    st.sampled_from([-(1 << 63), -1, 0, 1, 2, 3, 7, 1 << 16, 1 << 31, (1 << 40), (1 << 63) - 1]),
    st.integers(-(1 << 63), (1 << 63) - 1),
)
_STRINGS = st.one_of(
    st.sampled_from(
        [
            "",
            "../x.bin",
            "/etc/passwd",
            "a\x00b",
            "é",
            "x" * 300,
            "$mathtext$",
            "<script>",
            "w.bin",
            "C:\\w.bin",
            "sub/../w.bin",
        ]
    ),
    st.text(max_size=20),
)


# -- seeds ---------------------------------------------------------------------------------------


def _seeds() -> dict[str, onnx.ModelProto]:
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    matmul = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "matmul",
        [helper.make_tensor_value_info("x", f32, ["batch", 4])],
        [helper.make_tensor_value_info("z", f32, ["batch", 3])],
        [weight],
    )
    conv = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "K"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["y", "shape"], ["z"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", f32, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("z", f32, [1, 256])],
        [
            numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "K"),
            numpy_helper.from_array(np.array([1, 256], np.int64), "shape"),
        ],
    )
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Add", ["v", "v"], ["v2"])],
        "body",
        [
            helper.make_tensor_value_info("i", i64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", f32, [1]),
        ],
        [
            helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v2", f32, [1]),
        ],
    )
    loop = helper.make_graph(
        [helper.make_node("Loop", ["M", "cond", "x"], ["y"], body=body)],
        "loop",
        [helper.make_tensor_value_info("x", f32, [1])],
        [helper.make_tensor_value_info("y", f32, [1])],
        [
            numpy_helper.from_array(np.array(3, np.int64), "M"),
            numpy_helper.from_array(np.array(True), "cond"),
        ],
    )
    shapes = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("ConstantOfShape", ["s"], ["c"]),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ],
        "shapes",
        [helper.make_tensor_value_info("x", f32, [2, 3])],
        [helper.make_tensor_value_info("y", f32, [2, 3])],
    )
    opset = [helper.make_opsetid("", 17)]
    return {g.name: helper.make_model(g, opset_imports=opset) for g in (matmul, conv, loop, shapes)}


# -- mutations -----------------------------------------------------------------------------------


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    found = list(graph.node)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                found += _nodes(attr.g)
    return found


def _mutate(model: onnx.ModelProto, data: st.DataObject) -> tuple[onnx.ModelProto, list[str]]:
    """Apply 1-4 drawn mutations to a copy of `model`; returns it and what was done."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    done: list[str] = []
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(
            st.sampled_from(
                ["dims", "op", "attr", "init", "wire", "opset", "external", "const", "io", "name"]
            )
        )
        try:
            _mutate_one(kind, model, data)
        except Exception:  # a harness-side failure, not an outcome
            continue  # the mutation itself was impossible (e.g. reading an external tensor)
        done.append(kind)
    return model, done


def _mutate_one(kind: str, model: onnx.ModelProto, data: st.DataObject) -> None:
    """One mutation of kind `kind`, in place."""
    graph = model.graph
    nodes = _nodes(graph)
    if kind == "dims":
        values = [*graph.input, *graph.output]
        value = values[data.draw(st.integers(0, len(values) - 1))]
        dims = value.type.tensor_type.shape.dim
        if dims:
            dim = dims[data.draw(st.integers(0, len(dims) - 1))]
            if data.draw(st.booleans()):
                dim.dim_value = data.draw(_INTS)
            else:
                dim.dim_param = data.draw(_STRINGS)
    elif kind == "op" and nodes:
        data.draw(st.sampled_from(nodes)).op_type = data.draw(st.sampled_from(_OPS))
    elif kind == "attr" and nodes:
        node = data.draw(st.sampled_from(nodes))
        name = data.draw(st.sampled_from(["pads", "axis", "shape", "value", "to", "mode"]))
        node.attribute.append(
            helper.make_attribute(
                name,
                data.draw(
                    st.one_of(
                        _INTS,
                        st.lists(_INTS, max_size=6),
                        _STRINGS,
                        st.floats(allow_nan=True),
                        st.lists(st.floats(), max_size=4),
                    )
                ),
            )
        )
    elif kind == "init" and graph.initializer:
        tensor = data.draw(st.sampled_from(list(graph.initializer)))
        action = data.draw(st.sampled_from(["truncate", "extend", "dtype", "dims"]))
        if action == "truncate":
            tensor.raw_data = numpy_helper.to_array(tensor).tobytes()[:-1]
        elif action == "extend":
            tensor.raw_data = numpy_helper.to_array(tensor).tobytes() + b"\0" * 8
        elif action == "dtype":
            tensor.data_type = data.draw(st.integers(0, 25))
        else:
            tensor.dims[:] = data.draw(st.lists(_INTS, max_size=5))
    elif kind == "wire" and nodes:
        node = data.draw(st.sampled_from(nodes))
        names = [n for other in nodes for n in [*other.input, *other.output]]
        if node.input and names:
            node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(
                st.sampled_from([*names, "", "nowhere"])
            )
    elif kind == "opset":
        model.opset_import[0].version = data.draw(st.integers(-1, 30))
        if data.draw(st.booleans()):
            model.ir_version = data.draw(st.integers(-1, 12))
    elif kind == "external" and graph.initializer:
        tensor = data.draw(st.sampled_from(list(graph.initializer)))
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key in ("location", "offset", "length"):
            if data.draw(st.booleans()) or key == "location":
                entry = tensor.external_data.add()
                entry.key = key
                entry.value = data.draw(
                    _STRINGS
                    if key == "location"
                    else st.sampled_from(["0", "-1", "x", "999999999999"])
                )
    elif kind == "const":
        # A constant shape or count feeding an allocating op: the bombs of issue 13.
        op = data.draw(st.sampled_from(["ConstantOfShape", "Expand", "Tile", "Range", "Loop"]))
        size = data.draw(st.sampled_from([1 << 20, 1 << 28, 1 << 40, 3]))
        graph.initializer.append(numpy_helper.from_array(np.array([size], np.int64), "_big"))
        graph.node.append(
            helper.make_node(
                op,
                ["_big"] * (3 if op == "Range" else 1)
                + (["_big"] if op in ("Expand", "Tile") else []),
                ["_bomb"],
            )
        )
        graph.output.append(helper.make_tensor_value_info("_bomb", TensorProto.INT64, None))
    elif kind == "io":
        if graph.input and data.draw(st.booleans()):
            del graph.input[data.draw(st.integers(0, len(graph.input) - 1))]
        else:
            graph.output.append(graph.output[0] if graph.output else onnx.ValueInfoProto())
    elif kind == "name" and nodes:
        data.draw(st.sampled_from(nodes)).name = data.draw(_STRINGS)


def _mutate_bytes(raw: bytes, data: st.DataObject) -> bytes:
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(max_size=16))
    return bytes(raw)


def _data_folder(folder: Path, model: onnx.ModelProto, data: st.DataObject) -> None:
    """A --data folder for `model`'s first input, then mutated."""
    folder.mkdir()
    value = model.graph.input[0] if model.graph.input else None
    name = value.name if value is not None else "x"
    dims = (
        [d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]
        if value is not None
        else [1]
    )
    array = np.random.default_rng(0).standard_normal([2, *dims[1:]]).astype(np.float32)
    kind = data.draw(
        st.sampled_from(
            ["npy", "npz", "dtype", "shape", "nan", "object", "cut", "garbage", "empty", "png"]
        )
    )
    if kind == "dtype":
        array = array.astype(data.draw(st.sampled_from(["float16", "int8", "complex64", "bool"])))
    elif kind == "shape":
        array = array.reshape(-1)
    elif kind == "nan":
        array[...] = np.nan
    if kind == "npz":
        np.savez(folder / "a.npz", **{name: array})
    elif kind == "object":
        np.save(folder / f"{name}.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "cut":
        np.save(folder / f"{name}.npy", array)
        raw = (folder / f"{name}.npy").read_bytes()
        (folder / f"{name}.npy").write_bytes(raw[: data.draw(st.integers(0, len(raw)))])
    elif kind == "garbage":
        (folder / f"{name}.npy").write_bytes(data.draw(st.binary(max_size=64)))
    elif kind == "png":
        (folder / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + data.draw(st.binary(max_size=32)))
    elif kind != "empty":
        np.save(folder / f"{name}.npy", array)


# -- the worker ----------------------------------------------------------------------------------


def _worker(connection, memory: int) -> None:
    import os
    import sys

    os.environ["EDGEFORGE_MEMORY_LIMIT"] = str(memory)
    from edgeforge import cli
    from edgeforge._limits import apply_child_limits

    apply_child_limits(memory, cpu_seconds=10**7)  # time: the parent kills an overrunning case
    while True:
        argv = connection.recv()
        err, out = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                code = _load(argv[1]) if argv[0] == "load" else cli.main(argv)
        except MemoryError:
            code, err = 99, io.StringIO("MemoryError escaped main")
        except BaseException as exc:  # anything escaping main is a crash
            code = 98
            err.write(f"escaped main: {type(exc).__name__}: {exc}")
        sys.stdout.flush()
        connection.send((code, err.getvalue()[-4000:]))


def _load(path: str) -> int:
    """`edgeforge.load` as the CLI would report it: 0, or 2 and one line; else it raises."""
    import sys

    from edgeforge import EdgeforgeError, load

    try:
        load(path)
    except EdgeforgeError as exc:
        print(f"edgeforge: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"edgeforge: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


class _Pool:
    def __init__(self, memory: int, timeout: float) -> None:
        self.memory, self.timeout = memory, timeout
        self.context = multiprocessing.get_context("spawn")
        self.process = None
        self.connection = None

    def _start(self) -> None:
        parent, child = self.context.Pipe()
        # Not daemonic: a daemonic process may not start children, and verify runs its
        # comparison in one (the boundary under test); close() kills the worker itself.
        self.process = self.context.Process(target=_worker, args=(child, self.memory))
        self.process.start()
        self.connection = parent

    def run(self, argv: list[str]) -> tuple[str, int | None, str]:
        """(outcome kind, exit code, stderr) for one case."""
        if self.process is None or not self.process.is_alive():
            self._start()
        self.connection.send(argv)
        if not self.connection.poll(self.timeout):
            self.close()
            return "hang", None, f"no result after {self.timeout:g} s"
        try:
            code, err = self.connection.recv()
        except EOFError:
            exitcode = self.process.exitcode
            self.close()
            return "killed", exitcode, f"the worker died (exit code {exitcode})"
        return _classify(code, err), code, err

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
        self.process = None


def _classify(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("edgeforge:")]
    # "internal error" as edgeforge's own prefix: a model may name a file "internal error"
    internal = any(line.startswith("edgeforge: internal error") for line in lines)
    # Python's own traceback header, not the word: a mutated file may be named "Traceback".
    traceback = "Traceback (most recent call last)" in err
    if code in (98, 99) or internal or traceback:
        return "memory" if "MemoryError" in err else "crash"
    if code == 2:
        if len(lines) == 1 and lines[0].startswith("edgeforge: error:"):
            return "error"
        return "crash"  # exit 2 without exactly one edgeforge line
    return "result" if code in (0, 1) else "crash"


# -- the loop ------------------------------------------------------------------------------------


def _key(verb: str, kind: str, err: str) -> str:
    line = next((x for x in reversed(err.strip().splitlines()) if x.strip()), kind)
    line = re.sub(r"/[^\s:;,'\"]+", "<path>", line)
    line = re.sub(r"\d+", "N", line)[:200]
    return f"{verb}|{kind}|{line}"


def fuzz(minutes: float, out: Path, memory: int, case_timeout: float) -> dict:
    seeds = _seeds()
    pool = _Pool(memory, case_timeout)
    counts: dict[str, int] = {}
    by_verb = {verb: 0 for verb in VERBS}
    crashes: dict[str, dict[str, Any]] = {}
    crash_dir = out.parent / "fuzz_crashes"
    shutil.rmtree(crash_dir, ignore_errors=True)  # this run's reproducers only
    deadline = time.monotonic() + minutes * 60
    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix="edgeforge-fuzz-"))

    def one(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(seeds)))
        model, mutations = _mutate(seeds[name], data)
        case = Path(tempfile.mkdtemp(dir=scratch))
        path = case / "model.onnx"
        raw = model.SerializeToString()
        if data.draw(st.integers(0, 4)) == 0:
            raw, mutations = _mutate_bytes(raw, data), [*mutations, "bytes"]
        path.write_bytes(raw)
        if "external" in mutations:
            (case / "w.bin").write_bytes(b"\0" * 64)
        verb = data.draw(st.sampled_from(VERBS))
        if verb == "verify":
            clean = case / "clean.onnx"
            onnx.save(seeds[name], clean)
            with_data = data.draw(st.booleans())
            if with_data:
                _data_folder(case / "data", seeds[name], data)
            reference, candidate = (clean, path) if data.draw(st.booleans()) else (path, clean)
            # verify's own time limit, inside the case's: a hang is its one-line time-out
            argv = ["verify", str(reference), str(candidate), "--timeout", f"{case_timeout / 3:g}"]
            argv += ["--data", str(case / "data")] if with_data else []
        elif verb == "inspect":
            argv = ["inspect", str(path), "--json"]
        else:
            argv = ["load", str(path)]
        kind, code, err = pool.run(argv)
        counts[kind] = counts.get(kind, 0) + 1
        by_verb[verb] += 1
        if kind in ("crash", "memory", "hang", "killed"):
            key = _key(verb, kind, err)
            if key not in crashes:
                digest = hashlib.sha256(key.encode()).hexdigest()[:12]
                keep = crash_dir / digest
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(case, keep)
                crashes[key] = {
                    "verb": verb,
                    "kind": kind,
                    "exit_code": code,
                    "seed": name,
                    "mutations": mutations,
                    "message": err.strip()[-600:],
                    "argv": [a.replace(str(case), str(keep)) for a in argv],
                    "reproducer": str(keep.relative_to(out.parent.parent)),
                }
        shutil.rmtree(case, ignore_errors=True)

    @settings(
        max_examples=10,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def batch(data: st.DataObject) -> None:
        one(data)  # draws never depend on the clock or on outcomes: generation stays consistent

    try:
        while time.monotonic() < deadline:
            try:
                batch()
            except HypothesisException:  # the engine's own bookkeeping, never a case's outcome
                continue
    finally:
        pool.close()
        shutil.rmtree(scratch, ignore_errors=True)
    executions = sum(counts.values())
    result = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "minutes": round((time.time() - started) / 60, 2),
        "executions": executions,
        "executions_per_minute": round(executions / max(1e-9, (time.time() - started) / 60), 1),
        "by_verb": by_verb,
        "outcomes": counts,
        "unique_crashes": len(crashes),
        "crashes": list(crashes.values()),
        "memory_budget_bytes": memory,
        "case_timeout_s": case_timeout,
        "machine": f"{platform.node()} {platform.machine()}, {platform.python_version()}",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="how long to fuzz")
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz_load.json")
    parser.add_argument("--memory", type=int, default=1 << 30, help="budget per case, bytes")
    parser.add_argument("--case-timeout", type=float, default=30.0, help="seconds per case")
    args = parser.parse_args()
    result = fuzz(args.minutes, args.out, args.memory, args.case_timeout)
    print(
        f"{result['executions']} executions in {result['minutes']} min: {result['outcomes']}; "
        f"unique crashes: {result['unique_crashes']} (details in {args.out})"
    )


if __name__ == "__main__":
    main()
