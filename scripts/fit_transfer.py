"""Fit the transfer latency model (`estimator.transfer`) on every costable published row and
write it where the package ships it (`src/edgeforge/estimator/data/transfer.json`).

The device penalty and the per-device unit terms are chosen on a validation part of the rows
(whole devices, by hash), and the few-shot adaptation's prior variances from each device held
out of a fit on the others, as in `bench/estimator_validation.py`'s leave-one-device-out figure.

    PYTHONPATH=src .venv/bin/python scripts/fit_transfer.py [--rows FILE] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from edgeforge._api import published_rows
from edgeforge.estimator.calibration import zoo_profiles
from edgeforge.estimator.published import read_rows
from edgeforge.estimator.transfer import fit_with_inner_split, row_work

OUT = Path(__file__).resolve().parents[1] / "src/edgeforge/estimator/data/transfer.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, default=published_rows())
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    mapped = [r for r in read_rows(args.rows) if r.mapped and r.architecture]
    profiles = zoo_profiles({r.architecture for r in mapped})
    pairs = [(r, row_work(r, profiles)) for r in mapped]
    pairs = [(r, w) for r, w in pairs if w is not None and w.total > 0]
    model = fit_with_inner_split(
        [w for _, w in pairs], [r.latency_ms for r, _ in pairs], [r.device_id for r, _ in pairs]
    )
    model = dataclasses.replace(
        model,
        provenance={
            **model.provenance,
            "rows_file": args.rows.name,
            "rows": len(pairs),
            "devices": sorted({r.device_id for r, _ in pairs}),
            "architectures": sorted({r.architecture for r, _ in pairs}),
        },
    )
    args.out.write_text(json.dumps(model.to_dict(), indent=1) + "\n", encoding="utf-8")
    print(f"{len(pairs)} rows, shrink {model.shrink}, wrote {args.out}")


if __name__ == "__main__":
    main()
