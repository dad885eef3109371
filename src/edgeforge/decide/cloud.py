"""`CloudInstance`: a priced server that runs the model, timed by the same roofline as the edge.

An instance becomes an `edgeforge.devices.Device` (kind "host") with one compute unit, its
accelerator, so `estimate` picks that unit and the estimator's fitted factors for its kind (GPU or
CPU). Invariants:

- `server_ms(model)` is the estimate for one request (batch 1): what a request waits on the
  server once its turn comes. `split` and `cascade` reuse it.
- `batch_ms(model)` is the estimate for `batch` requests at once: the roofline with every node's
  work and activations multiplied by `batch` and the weights read once. An instance serves
  `batch` requests per `batch_ms`, which `decide` treats as `batch` parallel servers of service
  time `batch_ms` for capacity and cost; a request's latency counts only the batch its traffic
  fills (`_cloud_side.dynamic_batch`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeforge.decide._data import (
    INSTANCE_FIGURES,
    PEAK_DTYPES,
    DecideData,
    figure_of,
    load_data,
)
from edgeforge.devices import ComputeUnit, Device, Figure
from edgeforge.errors import EdgeforgeError

if TYPE_CHECKING:
    from edgeforge.analysis.profile import Profile
    from edgeforge.estimator import Estimate

__all__ = ["CloudInstance", "get_cloud_instance", "list_cloud_instances"]

_UNIT_KINDS = ("gpu", "cpu")


@dataclass(frozen=True)
class CloudInstance:
    """One instance type: hourly price (USD), accelerator peaks (GOPS), memory, batch size."""

    id: str
    name: str
    unit: str  # "gpu" or "cpu"
    unit_name: str
    hourly_usd: Figure
    memory_gb: Figure
    memory_bandwidth_gbps: Figure
    batch: Figure
    peak: dict[str, Figure]
    absent: dict[str, str]

    @property
    def batch_size(self) -> int:
        return max(1, int(self.batch.value))

    def device(self) -> Device:
        """This instance as a catalogue-style Device, for `estimate`."""
        unit = ComputeUnit(kind=self.unit, name=self.unit_name, peak=self.peak, absent=self.absent)
        return Device(
            id=f"cloud-{self.id}",
            name=self.name,
            kind="host",
            aliases=(),
            runtimes=("onnxruntime", "tensorrt") if self.unit == "gpu" else ("onnxruntime",),
            ram_gb=self.memory_gb,
            memory_bandwidth_gbps=self.memory_bandwidth_gbps,
            size_budget_mb=None,
            compute=(unit,),
            absent={"size_budget_mb": "a server loads any model that fits its memory"},
        )

    def estimate(
        self, model_or_profile: Any, *, precision: str = "fp32", batch: int = 1
    ) -> Estimate:
        """The estimator's result for `batch` requests at once on this instance."""
        from edgeforge.estimator import estimate

        profile = _profile(model_or_profile)
        if batch > 1:
            profile = _batched(profile, batch)
        return estimate(profile, self.device(), precision=precision)

    def server_ms(self, model_or_profile: Any, *, precision: str = "fp32") -> float:
        """Estimated inference time of one request (batch 1) on this instance, in ms."""
        return self.estimate(model_or_profile, precision=precision).latency_ms

    def batch_ms(self, model_or_profile: Any, *, precision: str = "fp32") -> float:
        """Estimated time for a full batch of `batch_size` requests, in ms."""
        return self.estimate(
            model_or_profile, precision=precision, batch=self.batch_size
        ).latency_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "unit": self.unit,
            "unit_name": self.unit_name,
            "hourly_usd": self.hourly_usd.to_dict(),
            "memory_gb": self.memory_gb.to_dict(),
            "memory_bandwidth_gbps": self.memory_bandwidth_gbps.to_dict(),
            "batch": self.batch.to_dict(),
            "peak": {dtype: fig.to_dict() for dtype, fig in self.peak.items()},
            "absent": dict(self.absent),
        }


def _profile(model_or_profile: Any) -> Profile:
    from edgeforge.analysis.profile import Profile, inspect

    if isinstance(model_or_profile, Profile):
        return model_or_profile
    return inspect(model_or_profile)


def _batched(profile: Profile, batch: int) -> Profile:
    """`profile` with each node's work and output elements times `batch` (leading axis), so
    that the roofline reads weights once and moves `batch` times the activations."""
    nodes = [
        dataclasses.replace(
            node,
            macs=node.macs * batch,
            flops=node.flops * batch,
            output_shapes=[
                [shape[0] * batch, *shape[1:]] if shape else shape for shape in node.output_shapes
            ],
        )
        for node in profile.nodes
    ]
    return dataclasses.replace(profile, nodes=nodes)


def list_cloud_instances(data: DecideData | None = None) -> list[CloudInstance]:
    data = data or load_data()
    return [get_cloud_instance(name, data) for name in data.instances]


def get_cloud_instance(name: str | CloudInstance, data: DecideData | None = None) -> CloudInstance:
    """The instance `name` from the catalogue (plus a --prices file); EdgeforgeError naming the
    valid ids when unknown, or the file key when a figure is missing or malformed."""
    if isinstance(name, CloudInstance):
        return name
    data = data or load_data()
    key = name.strip().casefold().replace(".", "-")
    table = data.instances.get(key)
    if table is None:
        raise EdgeforgeError(
            f"unknown cloud instance {name!r}; use one of {', '.join(data.instances)} "
            "or add one under [cloud_instances.<id>] in a --prices file"
        )
    where = f"cloud_instances.{key}"
    for text in ("name", "unit", "unit_name", *INSTANCE_FIGURES, "peak"):
        if text not in table:
            raise EdgeforgeError(f"{where}: missing {text}")
    if table["unit"] not in _UNIT_KINDS:
        raise EdgeforgeError(f"{where}.unit: {table['unit']!r} is not one of gpu, cpu")
    figures = {k: figure_of(table[k], f"{where}.{k}", data.origin) for k in INSTANCE_FIGURES}
    if figures["hourly_usd"].value < 0 or figures["batch"].value < 1:
        raise EdgeforgeError(f"{where}: hourly_usd must be >= 0 and batch >= 1")
    peak: dict[str, Figure] = {}
    absent: dict[str, str] = {}
    for dtype in PEAK_DTYPES:
        raw = table["peak"].get(dtype)
        if isinstance(raw, dict) and "absent" in raw:
            absent[dtype] = str(raw["absent"])
        elif raw is not None:
            peak[dtype] = figure_of(raw, f"{where}.peak.{dtype}", data.origin)
    if "fp32" not in peak:
        raise EdgeforgeError(f"{where}.peak.fp32: every instance needs an fp32 peak")
    return CloudInstance(
        id=key,
        name=str(table["name"]),
        unit=str(table["unit"]),
        unit_name=str(table["unit_name"]),
        peak=peak,
        absent=absent,
        **figures,
    )
