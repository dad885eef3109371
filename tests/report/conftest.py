"""Report sections built once from real results on the digits CNN (inspect, estimate, decide,
split) and the synthetic optimize result of `report_data`."""

from __future__ import annotations

from typing import Any

import pytest
from report_data import optimize_result

import edgeforge
from edgeforge.decide import decide, get_cloud_instance, get_network
from edgeforge.demo import _export_check_text
from edgeforge.estimator import estimate_devices
from edgeforge.hybrid import split


@pytest.fixture(scope="session")
def report_sections(digits_model) -> dict[str, Any]:
    profile = edgeforge.inspect(digits_model)
    # coral-usb-accelerator runs int8 only: its fp32 row says why instead of failing the list
    devices = ["raspberry-pi-4", "jetson-nano", "coral-usb-accelerator"]
    cloud = get_cloud_instance("g4dn-xlarge").device()
    cut = split(digits_model, "raspberry-pi-4", get_network("4g"), cloud=cloud)
    return {
        "demo": {
            "description": "The digits CNN the tests build.",
            "facts": {
                "ONNX file": str(digits_model.onnx_path),
                "export check (torch against ONNX Runtime)": _export_check_text(
                    digits_model.provenance.export_check
                ),
            },
        },
        "inspect": profile.to_dict(),
        "estimate": [r.to_dict() for r in estimate_devices(profile, devices)],
        "decide": [decide(profile, "pixel-8", users=1, requests_per_day=50).to_dict()],
        "split": cut.to_dict(),
        "optimize": optimize_result([0.0, 0.0, 0.0, 0.004, 0.004, 0.006, 0.012, 0.0]),
    }
