"""What on-device personalisation buys: simulated users, before and after, per package form.

For each task (scikit-learn's digits with a CNN; a synthetic 6-class tabular task with an MLP)
a base model is trained on clean data, a personalisation package is built from it
(`edgeforge.personalize`, ONNX Runtime backbone), and simulated users whose data differs
(`edgeforge.personalize.simulate`: own class mix, own style) each give 5, 20 or 50 labelled
samples. `PersonalizationPackage.train` runs on the device side exactly as an agent would,
guard included; accuracy is measured on each user's own held-out data (never trained or
checked on) before (the base model) and after (what `predict` returns: the personal head if
kept, the base model if the guard discarded it). Forms: "head" (numpy) and "executorch" (the
training program) on the same split, same settings.

The tabular package carries the input adapter's statistics (per-class feature means and
within-class spread of the MLP's training data): each tabular candidate is a per-feature gain
and offset before the backbone plus the head, judged together by the guard. Digits are images:
their package has no adapter and says why.

The guard's rule and the training settings were chosen on other simulated users (digits seed
102, tabular seed 101; the adapter's pull on tabular seeds 101 and 104), never on the users
measured here (seeds 1, 2 and 3).

    .venv/bin/python bench/personalize_bench.py [--users 40] [--out bench/results/personalize.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeforge.fleet.personal import PersonalizationPackage
from edgeforge.personalize import personalize
from edgeforge.personalize.simulate import digits_users, tabular_task, tabular_users
from edgeforge.zoo import train_digits_cnn

COUNTS = (5, 20, 50)
FORMS = ("head", "executorch")


def tabular_model(seed: int = 0) -> tuple[nn.Module, np.ndarray, np.ndarray, float]:
    train_x, train_y, pool_x, pool_y = tabular_task(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 6)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    for _ in range(60):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(pool_x)).argmax(1).numpy() == pool_y).mean())
    return model, pool_x, pool_y, accuracy


def tabular_reference(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The tabular model's training data: the package keeps only its aggregates (per-class
    feature means, within-class spread) for the input adapter."""
    train_x, train_y, _, _ = tabular_task(seed)
    return train_x, train_y


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def run_users(package: PersonalizationPackage, users: list, forms: tuple[str, ...]) -> dict:
    rows = []
    for index, user in enumerate(users):
        base_logits, _ = package.embed(user.held_x)
        base = accuracy(base_logits, user.held_y)
        for count in COUNTS:
            for form in forms:
                model = package.train(user.samples[:count], user.labels[:count], form=form)
                after = accuracy(model.predict(user.held_x), user.held_y)
                rows.append(
                    {
                        "user": index,
                        "style": user.style,
                        "samples": count,
                        "form": form,
                        "base": base,
                        "after": after,
                        "kept": model.kept,
                        "train_seconds": model.train_seconds,
                        "peak_bytes": model.peak_bytes,
                        "loss_first": model.losses[0] if model.losses else None,
                        "loss_last": model.losses[-1] if model.losses else None,
                    }
                )
    return {"rows": rows, "summary": summarise(rows)}


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for count in COUNTS:
        for form in {row["form"] for row in rows}:
            chosen = [r for r in rows if r["samples"] == count and r["form"] == form]
            gains = [100 * (r["after"] - r["base"]) for r in chosen]
            summary[f"{form}/{count}"] = {
                "users": len(chosen),
                "base_accuracy_mean": round(100 * statistics.mean(r["base"] for r in chosen), 2),
                "after_accuracy_mean": round(100 * statistics.mean(r["after"] for r in chosen), 2),
                "gain_points_mean": round(statistics.mean(gains), 2),
                "gain_points_min": round(min(gains), 2),
                "users_worse": sum(g < 0 for g in gains),
                "kept_share": round(statistics.mean(r["kept"] for r in chosen), 3),
                "train_seconds_median": round(
                    statistics.median(r["train_seconds"] for r in chosen), 4
                ),
                "peak_bytes_max": max(r["peak_bytes"] for r in chosen),
            }
    return summary


def form_gap(summary: dict) -> dict:
    """Mean accuracy after, numpy head minus ExecuTorch program, per sample count (points)."""
    return {
        count: round(
            summary[f"head/{count}"]["after_accuracy_mean"]
            - summary[f"executorch/{count}"]["after_accuracy_mean"],
            2,
        )
        for count in COUNTS
        if f"executorch/{count}" in summary
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("bench/results/personalize.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "command": f"bench/personalize_bench.py --users {args.users}",
        "tasks": {},
    }
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        cnn, data, clean = train_digits_cnn()
        build = personalize(
            cnn,
            work / "digits",
            example_inputs=(torch.from_numpy(data.test_x[:1]),),
            input_names=["image"],
            name="digits-cnn",
            version=1,
        )
        package = PersonalizationPackage.load(build.out)
        shifted = digits_users(data.test_x, data.test_y, args.users, seed=1)
        plain = digits_users(data.test_x, data.test_y, args.users // 2, seed=2, shifted=False)
        results["tasks"]["digits"] = {
            "model": "DigitsCNN, head = last Linear(64, 10)",
            "base_clean_accuracy": clean,
            "build_seconds": build.seconds,
            "forms_built": {k: "error" not in v for k, v in build.forms.items()},
            "input_adapter": build.adapter,
            "training": package.training,
            "shifted": run_users(package, shifted, FORMS),
            "unshifted": run_users(package, plain, ("head",)),
        }
        mlp, pool_x, pool_y, clean = tabular_model()
        build = personalize(
            mlp,
            work / "tabular",
            example_inputs=(torch.from_numpy(pool_x[:1]),),
            input_names=["features"],
            trainable="2,4",
            reference=tabular_reference(),
            name="tabular-mlp",
            version=1,
        )
        package = PersonalizationPackage.load(build.out)
        users = tabular_users(pool_x, pool_y, args.users, seed=3)
        results["tasks"]["tabular"] = {
            "model": "MLP 20-64-32-6, head = the last two Linear layers, input adapter",
            "base_clean_accuracy": clean,
            "build_seconds": build.seconds,
            "forms_built": {k: "error" not in v for k, v in build.forms.items()},
            "input_adapter": build.adapter,
            "training": package.training,
            "shifted": run_users(package, users, FORMS),
        }
    for name, task in results["tasks"].items():
        task["head_minus_executorch_points"] = form_gap(task["shifted"]["summary"])
        for part in ("shifted", "unshifted"):
            if part in task:
                print(f"{name} {part}:")
                for key, row in task[part]["summary"].items():
                    print(f"  {key:<14} {json.dumps(row)}")
        print(f"  numpy head minus ExecuTorch (points): {task['head_minus_executorch_points']}")
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} in {results['seconds']} s")


if __name__ == "__main__":
    main()
