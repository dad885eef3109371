"""How good are the estimates? Median absolute percentage error and the share within +-25%.

Two parts:
- published rows held out from the fit (edge_benchmarks.csv as shipped in the package, split by a
  hash of architecture and device), or every row of `--rows FILE` (any CSV in that format, e.g. new
  measurements, all of which are validation rows), reported per device and overall;
- this machine: `estimate` on the device `this-machine` against `bench` (ONNX Runtime, measured
  here) over the zoo's architectures, CNNs and a transformer.

Two more parts on the published rows (issue 19), written under "mapping" and "generalisation":
- mapping: the share of rows whose model name the name layer (`estimator.names`) reads as one
  network, whose device the catalogue knows, both, and both with a network the zoo builds; every
  unmapped row with its reason;
- generalisation: the existing fit (`calibration.fit`, unchanged) scored on rows it never saw,
  split BY MODEL (each zoo architecture held out in turn: every spelling and precision of it is
  out of the fit together) and LEAVE ONE DEVICE OUT (each catalogue device held out in turn, so
  its rows are estimated from the pooled per-unit entries). Nothing is tuned on these splits.
- transfer: the transfer model (`estimator.transfer`, what `estimate` uses) on the same rows
  and splits, its device penalty and per-device unit terms chosen on whole groups split off
  each training fold, the adaptation's prior variances from the fold's training devices each
  held out of a fit on the others; and few-shot on each left-out device: 1, 3, 5, 10 of its
  rows adapt it (`TransferModel.adapt`, as `calibrate --device` does), scored on its rows of
  the other architectures, before/after.

    .venv/bin/python bench/estimator_validation.py [--rows FILE] [--json] [--skip-here]
        [--skip-generalisation] [--recalibrate] [--threads N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from edgeforge._api import published_rows
from edgeforge._progress import track
from edgeforge.analysis import inspect
from edgeforge.bench import bench
from edgeforge.devices import get_device
from edgeforge.estimator import calibrate, estimate, validate_file
from edgeforge.estimator.names import mapping_report
from edgeforge.zoo import catalog

SHARED_ROWS = published_rows()  # shipped in the package (estimator/data/), so any folder works
HERE = catalog.names()  # every zoo architecture
BERT_TOKENS = (64, 128)  # a BERT-style encoder (issue 19) at these sequence lengths


def bert_encoder(tokens: int) -> tuple:
    """A 6-layer BERT encoder (hidden 384, 12 heads, feed-forward 1536, BERT's vocabulary) built
    from a `transformers` config with random weights (nothing downloaded), exported at a fixed
    sequence length: `(module, inputs, options)` as `catalog.build` returns."""
    import torch
    import transformers

    config = transformers.BertConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    )

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = transformers.BertModel(config, add_pooling_layer=False)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids).last_hidden_state

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = Encoder().eval()
    ids = torch.randint(
        1, config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0)
    )
    return module, (ids,), {"input_names": ["input_ids"], "output_names": ["hidden"]}


def here_models() -> list[tuple[str, tuple]]:
    """(name, build) for this machine's check: the zoo, then the BERT encoder."""
    zoo = [(name, lambda name=name: catalog.build(name)) for name in HERE]
    bert = [(f"bert_6x384_{n}tokens", lambda n=n: bert_encoder(n)) for n in BERT_TOKENS]
    return zoo + bert


_ROUNDS = 3  # runs of every model, the median


def this_machine(recalibrate: bool = False, threads: int | None = None) -> dict:
    """`estimate --device this-machine` against `bench` over `here_models()`, `threads` (None:
    ONNX Runtime's default, as `bench` uses) the same for the calibration, the estimate and the
    measurement. A calibration stored with other threads is redone."""
    from edgeforge.devices._this_machine import read_calibration
    from edgeforge.devices._this_machine import this_machine as host_device
    from edgeforge.estimator.here import calibrate_here

    load_before = os.getloadavg()
    stored = read_calibration()
    stale = stored is None or stored["entry"].get("fit", {}).get("threads") != threads
    if recalibrate or stale:
        print("calibrating this machine (edgeforge calibrate --here)...")
        calibrate_here(threads=threads)
    host_device.cache_clear()
    device = get_device("this-machine")
    models = []
    for name, build in here_models():
        module, inputs, options = build()
        profile = inspect(module, inputs, **options)
        predicted = estimate(profile, device, runtime="onnxruntime", threads=threads).latency_ms
        models.append((name, profile, predicted))
    # Three runs, the median: three rounds over every model rather than three runs of one
    # model in a row, so that a passing disturbance on this shared machine (a neighbour's
    # burst) touches one run of several models, not all three of one. Each at the shapes the
    # estimate assumed (bench alone would pick its own defaults for dynamic axes).
    runs: dict[str, list[float]] = {name: [] for name, _, _ in models}
    for _ in track(range(_ROUNDS), "bench rounds"):
        for name, profile, _ in models:
            measured = bench(
                profile.model["path"],
                runs=30,
                warmup=5,
                repeats=1,
                shapes=profile.input_shapes(),
                threads=threads,
            ).latency_ms["p50"]
            runs[name].append(measured)
    rows, errors = [], []
    for name, _, predicted in models:
        measured = statistics.median(runs[name])
        error = abs(predicted - measured) / measured
        errors.append(error)
        rows.append(
            {
                "architecture": name,
                "estimate_ms": predicted,
                "measured_ms": measured,
                "measured_runs_ms": runs[name],
                "abs_pct_error": 100 * error,
            }
        )
        spread = max(runs[name]) / min(runs[name])
        print(
            f"{name:22s} estimate {predicted:8.2f} ms  measured {measured:8.2f} ms  "
            f"error {100 * error:5.1f}%  (runs spread {spread:.2f}x)"
        )
    return {
        "rows": rows,
        # the host's 1/5/15-minute load averages: timings on a busy machine are not comparable
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "threads": threads,
        "median_abs_pct_error": 100 * statistics.median(errors),
        "within_20pct": sum(e <= 0.20 for e in errors) / len(errors),
        "within_25pct": sum(e <= 0.25 for e in errors) / len(errors),
    }


def mapping(rows_path: Path) -> dict:
    """How many published rows the name layer and the catalogue map (no torch needed)."""
    import csv

    from edgeforge.devices import get_device as device_of
    from edgeforge.errors import EdgeforgeError

    with open(rows_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = mapping_report(rows)
    unmapped_names = {entry["line"]: entry["reason"] for entry in names["unmapped"]}
    from edgeforge.estimator.names import normalise

    device_ok = both = both_zoo = 0
    unmapped: list[dict] = []
    for line, row in enumerate(rows, start=2):
        reasons = []
        if line in unmapped_names:
            reasons.append(unmapped_names[line])
        try:
            device_of(row["device"])
            device_ok += 1
        except EdgeforgeError:
            reasons.append(f"device {row['device']!r} is not in the catalogue")
        if reasons:
            unmapped.append(
                {
                    "line": line,
                    "model": row["model"],
                    "device": row["device"],
                    "reason": "; ".join(reasons),
                }
            )
            continue
        both += 1
        if normalise(row["model"], row["input"], row["precision"]).architecture is not None:
            both_zoo += 1
    total = len(rows)
    return {
        "rows": total,
        "model_name_mapped_share": names["names_mapped_share"],
        "device_mapped_share": round(device_ok / total, 4),
        "both_mapped_share": round(both / total, 4),
        "both_mapped_and_zoo_built_share": round(both_zoo / total, 4),
        "networks_the_zoo_lacks": names["networks_the_zoo_lacks"],
        "unmapped": unmapped,
    }


def _errors(report: dict) -> list[float]:
    return [row["abs_pct_error"] for row in report["rows"]]


def _summary(errors: list[float]) -> dict:
    if not errors:
        return {"rows": 0, "median_abs_pct_error": None, "within_25pct": None}
    return {
        "rows": len(errors),
        "median_abs_pct_error": round(statistics.median(errors), 1),
        "within_25pct": round(sum(e <= 25 for e in errors) / len(errors), 3),
    }


def generalisation(rows_path: Path) -> dict:
    """The existing fit, scored on rows held out by model and by device (no tuning on them)."""
    from edgeforge.estimator.calibration import fit, validate, zoo_profiles
    from edgeforge.estimator.published import read_rows

    rows = read_rows(rows_path)
    mapped = [r for r in rows if r.mapped and r.architecture]
    profiles = zoo_profiles({r.architecture for r in mapped})

    by_model: dict[str, dict] = {}
    model_errors: list[float] = []
    for architecture in sorted({r.architecture for r in mapped}):
        factors = fit([r for r in mapped if r.architecture != architecture], profiles)
        report = validate([r for r in mapped if r.architecture == architecture], factors, profiles)
        errors = _errors(report)
        model_errors += errors
        by_model[architecture] = _summary(errors)

    by_device: dict[str, dict] = {}
    device_errors: list[float] = []
    for device in sorted({r.device_id for r in mapped if r.device_id}):
        factors = fit([r for r in mapped if r.device_id != device], profiles)
        report = validate([r for r in mapped if r.device_id == device], factors, profiles)
        errors = _errors(report)
        device_errors += errors
        by_device[device] = _summary(errors)
    return {
        "rows_mapped_by_published_reader": len(mapped),
        "note": "rows map through published.read_rows (zoo catalogue names and aliases, the "
        "catalogue's device aliases); rows whose device unit has no sourced peak cannot be costed "
        "and are not scored",
        "split_by_model": {"overall": _summary(model_errors), "by_architecture": by_model},
        "leave_one_device_out": {"overall": _summary(device_errors), "by_device": by_device},
    }


def _works(rows_path: Path) -> tuple[list, list, list[float]]:
    """The costable mapped rows with their `RowWork` (the same rows `generalisation` scores)."""
    from edgeforge.estimator.calibration import zoo_profiles
    from edgeforge.estimator.published import read_rows
    from edgeforge.estimator.transfer import row_work

    mapped = [r for r in read_rows(rows_path) if r.mapped and r.architecture]
    profiles = zoo_profiles({r.architecture for r in mapped})
    pairs = [(r, row_work(r, profiles)) for r in mapped]
    pairs = [(r, w) for r, w in pairs if w is not None and w.total > 0]
    return [r for r, _ in pairs], [w for _, w in pairs], [r.latency_ms for r, _ in pairs]


def _pct(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured * 100


def transfer(rows_path: Path, shots: tuple[int, ...] = (1, 3, 5, 10), draws: int = 5) -> dict:
    """The transfer model (`estimator.transfer`) on the same held-out splits as `generalisation`,
    its device penalty chosen on a validation part of each training fold (whole models, or whole
    devices, split off by hash); then few-shot: on each left-out device, N of its rows (drawn at
    random, `draws` times) adapt the device's terms, and the error is scored on its rows of the
    OTHER architectures (none of a reference row's architecture), before and after."""
    import random

    from edgeforge.estimator.transfer import fit_with_inner_split, grouped_folds

    rows, works, measured = _works(rows_path)

    def held_out(key) -> tuple[dict, dict]:
        errors: list[float] = []
        per: dict[str, dict] = {}
        models = {}
        for group, train, test in grouped_folds([key(r) for r in rows]):
            model = fit_with_inner_split(
                [works[i] for i in train],
                [measured[i] for i in train],
                [key(rows[i]) for i in train],
            )
            models[group] = model
            group_errors = [_pct(model.predict(works[i]), measured[i]) for i in test]
            errors += group_errors
            per[group] = {**_summary(group_errors), "shrink": model.shrink}
        return {"overall": _summary(errors), "by_group": per}, models

    by_model, _ = held_out(lambda r: r.architecture)
    by_device, device_models = held_out(lambda r: r.device_id)
    few_shot: dict[str, dict] = {}
    for count in shots:
        before: list[float] = []
        after: list[float] = []
        devices = 0
        for device, model in device_models.items():
            own = [i for i, r in enumerate(rows) if r.device_id == device]
            if len(own) <= count:
                continue
            scored = False
            for draw in range(draws):
                picked = random.Random(f"{device}/{count}/{draw}").sample(own, count)
                seen = {rows[i].architecture for i in picked}
                test = [i for i in own if rows[i].architecture not in seen]
                if not test:
                    continue
                adapted = model.adapt([works[i] for i in picked], [measured[i] for i in picked])
                before += [_pct(model.predict(works[i]), measured[i]) for i in test]
                after += [_pct(adapted.predict(works[i]), measured[i]) for i in test]
                scored = True
            devices += scored
        few_shot[str(count)] = {
            "devices": devices,
            "before": _summary(before),
            "after": _summary(after),
        }
    return {
        "rows": len(rows),
        "note": "shrink (the device-term penalty) and whether the pooled fit has per-device unit "
        "terms are chosen per training fold on a validation part of it (whole groups by hash); "
        "the adaptation's prior variances come from the fold's training devices, each held out "
        "of a fit on the others; few-shot reference rows are drawn at random from the "
        "left-out device's rows, and scored rows are that device's rows of the architectures no "
        "reference row has",
        "split_by_model": by_model,
        "leave_one_device_out": by_device,
        "few_shot_on_left_out_devices": few_shot,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, help="validate every row of this CSV")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.add_argument("--skip-here", action="store_true", help="skip this machine's part")
    parser.add_argument(
        "--recalibrate", action="store_true", help="rerun `calibrate --here` even if stored"
    )
    parser.add_argument(
        "--skip-published", action="store_true", help="skip the published rows' part"
    )
    parser.add_argument(
        "--skip-generalisation",
        action="store_true",
        help="skip the split-by-model and leave-one-device-out scores",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="this machine's part: threads for calibration, estimate and bench (default: "
        "ONNX Runtime's own, as bench uses)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/estimator_validation.json"))
    args = parser.parse_args()
    result: dict = {"mapping": mapping(args.rows or SHARED_ROWS)}
    if not args.skip_generalisation:
        result["generalisation"] = generalisation(args.rows or SHARED_ROWS)
        result["transfer"] = transfer(args.rows or SHARED_ROWS)
    if args.rows:
        result["published"] = validate_file(args.rows)
    elif not args.skip_published:
        result["published"] = calibrate(SHARED_ROWS)[1]
    if not args.skip_here:
        result["this_machine"] = this_machine(args.recalibrate, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    shares = {k: v for k, v in result["mapping"].items() if k.endswith("share")}
    print(f"mapping: {shares}")
    if "generalisation" in result:
        general = result["generalisation"]
        print(f"split by model: {general['split_by_model']['overall']}")
        print(f"leave one device out: {general['leave_one_device_out']['overall']}")
        moved = result["transfer"]
        print(f"transfer model, split by model: {moved['split_by_model']['overall']}")
        print(f"transfer model, leave one device out: {moved['leave_one_device_out']['overall']}")
        for count, shot in moved["few_shot_on_left_out_devices"].items():
            print(
                f"  {count:>2} reference rows ({shot['devices']} devices): before "
                f"{shot['before']['median_abs_pct_error']}%, after "
                f"{shot['after']['median_abs_pct_error']}% over {shot['after']['rows']} rows"
            )
    if "published" in result:
        published = result["published"]
        print(f"published rows: {published['overall']}")
        for device, summary in published["by_device"].items():
            print(f"  {device:24s} {summary}")
        print(f"rows it could not map: {len(published.get('unmapped', []))}")
    if "this_machine" in result:
        here = result["this_machine"]
        print(
            f"this machine: median abs error {here['median_abs_pct_error']:.1f}%, "
            f"within 20%: {here['within_20pct']:.0%} of {len(here['rows'])}, "
            f"within 25%: {here['within_25pct']:.0%}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
