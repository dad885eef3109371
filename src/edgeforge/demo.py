"""`edgeforge demo`: the main job end to end on an example model built here.

It trains a small CNN on scikit-learn's bundled digits (seconds, no download), imports it the
way a user would (a torch module with example inputs and a dynamic batch axis), runs every verb
that exists, and writes one JSON + HTML report. Each new verb adds its section here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeforge._load import load
from edgeforge._progress import console
from edgeforge.analysis import inspect
from edgeforge.bench import bench
from edgeforge.convert import convert
from edgeforge.decide import decide
from edgeforge.decide.render import print_decision
from edgeforge.devices import get_device, list_devices
from edgeforge.estimator import estimate
from edgeforge.estimator.render import print_estimates
from edgeforge.optimize.search import optimize
from edgeforge.personalize import demo_personalize
from edgeforge.render import print_bench, print_conversion
from edgeforge.report import write_report
from edgeforge.zoo import train_digits_cnn

__all__ = ["run_demo", "ship"]


def run_demo(out: Path) -> Path:
    """Run the demo into `out`; returns the HTML report's path."""
    out = Path(out)
    console.print("[bold]1/4[/] training a CNN on scikit-learn's digits")
    module, data, accuracy = train_digits_cnn()
    example = torch.from_numpy(data.test_x[:1])
    model = load(
        module,
        example,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
        workdir=out / "model",
    )
    console.print(f"[bold]2/4[/] exported to {model.onnx_path} and checked in ONNX Runtime")
    profile = inspect(model)
    console.print("[bold]3/4[/] inspected; converting to every runtime and retesting each")
    data_folder = _labelled_samples(data, out / "data")
    conversion = convert(model, "all", out / "artifacts", data=data_folder)
    print_conversion(conversion)
    console.print("[bold]4/4[/] measuring latency here; writing the report")
    measured = bench(model, runs=100, repeats=3)
    print_bench(measured)
    estimates = [
        estimate(profile, get_device(name)) for name in ("raspberry-pi-4", "jetson-nano", "pixel-8")
    ]
    print_estimates(estimates)
    console.print("[bold]shrinking[/] it for two devices within a 1% accuracy drop")
    optimized = [
        optimize(
            model.onnx_path,
            name,
            data_folder,
            out=out / "optimize" / name,
            max_accuracy_drop="1%",
            bench_runs=20,
        )
        for name in ("raspberry-pi-4", "laptop-cpu")
    ]
    for result in optimized:
        chosen = result.chosen
        console.print(
            f"  {result.device}: "
            + (f"chose {chosen}" if chosen else "nothing met the limits")
            + f" - report {result.report_path}"
        )
    console.print("[bold]edge or cloud?[/] the decision for 1,000 users on two devices")
    decisions = [
        decide(profile, name, users=1000, requests_per_day=200, network="4g")
        for name in ("raspberry-pi-4", "pixel-8")
    ]
    for decision in decisions:
        print_decision(decision)
    console.print("[bold]shipping[/] it: a signed release for two device classes, one fetched back")
    shipped = ship(model.onnx_path, data_folder, out / "fleet")
    console.print("[bold]personalising[/] it on a device for one user, from 20 labelled samples")
    personal = demo_personalize(out, module, data)
    console.print(f"  {personal}")
    sections = {
        "demo": {
            "description": "A small CNN (conv-BN-ReLU x2, max-pool, two linear layers) trained "
            "for a few seconds on scikit-learn's 8x8 digits, exported with torch.onnx (dynamo) "
            "with a dynamic batch axis.",
            "facts": {
                "test accuracy (torch)": f"{accuracy:.1%} on {len(data.test_y)} held-out digits",
                "ONNX file": str(model.onnx_path),
                "exporter": model.provenance.exporter,
                "export check (torch against ONNX Runtime)": _export_check_text(
                    model.provenance.export_check
                ),
                **{f"optimize report ({r.device})": str(r.report_path) for r in optimized},
                **shipped,
                "personalisation (one simulated user)": personal,
            },
        },
        "inspect": profile.to_dict(),
        "convert": conversion.to_dict(),
        "bench": measured.to_dict(),
        "estimate": [e.to_dict() for e in estimates],
        "decide": [d.to_dict() for d in decisions],
        "devices": [device.to_dict() for device in list_devices()],
    }
    return write_report(sections, out / "report.html", title="edgeforge demo report")


def _export_check_text(errors: dict[str, float]) -> str:
    """{'logits': 1.4e-06} -> 'logits: max abs error 1.43e-06' (a sentence, not a dict)."""
    if not errors:
        return "not measured"
    return "; ".join(f"{name}: max abs error {error:.3g}" for name, error in errors.items())


def _labelled_samples(data, folder: Path, count: int = 192) -> Path:
    """Held-out digits as .npz samples with labels, so parity also reports accuracy."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.savez(folder / f"{i:03}.npz", image=data.test_x[i : i + 1], label=data.test_y[i])
    return folder


def ship(source: Path, data: Path, folder: Path) -> dict[str, str]:
    """Release `source` for two device classes into a new signed repository in `folder` (the
    demo's own: replaced on every run), point `production` at it, and fetch the Raspberry Pi
    variant back through the device client, verified. Returns facts for the report."""
    import shutil

    from edgeforge.fleet.client import fetch
    from edgeforge.fleet.demo import roll_out
    from edgeforge.fleet.release import move_alias, release
    from edgeforge.fleet.repository import Repository

    shutil.rmtree(folder, ignore_errors=True)
    repo = Repository.init(folder / "repo").path
    result = release(
        source,
        repo,
        "digits",
        "linux-x86=onnxruntime,raspberry-pi-4=onnxruntime:int8-dynamic",
        data=data,
        max_accuracy_drop="2%",
        bench_runs=20,
    )
    console.print(f"  {result.verdict}")
    if not result.released:
        return {"release": result.verdict}
    move_alias(repo, f"digits@{result.version}", "production")
    got = fetch(
        repo,
        folder / "device-state",
        "digits",
        "raspberry-pi-4",
        folder / "device" / "digits",
        alias="production",
        root=repo / "metadata" / "1.root.json",
    )
    accuracy = got.index["evidence"]["accuracy"]
    fetched = (
        f"digits@production (version {got.version}) for {got.device_class}: "
        f"{len(got.files)} files verified against the signed metadata into {got.out}; "
        f"its evidence: {got.index['precision']}, accuracy {accuracy['candidate']:.1%} "
        f"(source {accuracy['reference']:.1%})"
    )
    console.print(f"  fetched {fetched}")
    console.print("[bold]rolling it out[/]: a fleet server and 4 devices, in two waves")
    rolled = roll_out(repo, folder / "fleet-demo", "digits", result.version, "raspberry-pi-4")
    status = rolled["status"]
    devices = status["devices"]
    running = sum(d.active is not None and d.active["version"] == result.version
                  for d in rolled["devices"])  # fmt: skip
    waves = ", ".join(f"{share:.0%}" for share in status["waves"])
    rollout = (
        f"digits@{result.version} to {status['device_class']}: {status['state']} after "
        f"wave {status['wave']} of {len(status['waves'])} ({waves}); "
        f"{devices['success']} of {devices['in_class']} devices reported success, "
        f"{running} run it (server {rolled['server']}, stopped; its log in "
        f"{folder / 'fleet-demo'})"
    )
    console.print(f"  {rollout}")
    dashboard = (
        f"{rolled['again']} (then http://127.0.0.1:8080/dashboard, "
        f"with the admin token in {rolled['admin_token_file']})"
    )
    console.print(f"  its dashboard again: {dashboard}")
    return {
        "release": result.verdict,
        "repository": str(repo),
        "fetched": fetched,
        "rollout": rollout,
        "dashboard": dashboard,
    }
