"""A `Recipe`: the precision a runtime builds an artifact in, and its options.

Each runtime carries a recipe out with its own tooling (ONNX Runtime's quantizer, NNCF,
ai-edge-quantizer, coremltools.optimize...); a runtime that cannot honour a recipe says so.

Options shared by the quantizing precisions (a runtime ignores those that do not apply):

- `data` (int8-static): a folder `evaluate.data.load_data` reads, the calibration samples;
  without it, random synthesised samples calibrate and the build notes say so.
- `calibration_samples` (int8-static): how many samples calibrate, an int >= 1 (64).
- `preprocess` (int8-static): how images in `data` become inputs, as `--preprocess` says (its
  text, or `Preprocess.to_dict()`), so that calibration sees what verification sees.
- `calibration_method` (int8-static): `minmax`, `entropy` or `percentile` (`minmax`).
- `per_channel` (int8-static, int8-dynamic): one weight scale per output channel (true).
- `activation_type` (int8-static): `uint8` or `int8` (`uint8`: x86 kernels with VNNI are
  fastest on uint8 activations with int8 weights; `int8` suits ARM kernels).
- `nodes_to_exclude` (int8-static, int8-dynamic, int4-weight, fp16): node names kept in
  float ([]).
- `block_size` (int4-weight): weights per scale, a power of two >= 16 (128).

Options that only some runtimes read (each runtime checks their values where it reads them):

- `symmetric` (int4-weight on OpenVINO, LiteRT, Core ML): symmetric weight scales (true).
- `group_size` (int4-weight on OpenVINO and Core ML): weights per scale (OpenVINO 128, Core ML 32).
- `ratio` (int4-weight on OpenVINO): the share of weights compressed to int4, in (0, 1] (1).
- `preset` (int8-static on OpenVINO): NNCF's `performance` or `mixed` (`performance`).
- `model_type` (int8-static on OpenVINO and ONNX Runtime): `transformer` quantizes the way
  the quantizers recommend for transformers (NNCF: SmoothQuant, softmax and layer norms
  float; ONNX Runtime: the MatMul/Gemm weight products only, the feed-forward block into and
  out of GELU kept float); unset: the defaults, for CNNs.
- `smooth_quant_alpha` (int8-static on OpenVINO, transformer): SmoothQuant's MatMul alpha, in
  (0, 1] (0.8).
- `keep_feed_forward_float` (int8-static on OpenVINO, transformer): the GELU-fed MatMuls kept
  float (false).

`bf16` (OpenVINO) computes in bfloat16 on CPUs that have it (AVX-512 BF16, AMX): the weights
stay fp32 on disk (the CPU plugin converts them) and the session's inference precision is
bf16.
- `coreml_target`, `tensorrt_profiles`, `tensorrt_max_dim`: see those runtimes' modules.

Any other name is refused, naming the closest known one: a misspelt option would otherwise be
ignored without a word. Options must be JSON values: they are written into the artifact's
manifest.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from edgeforge.errors import EdgeforgeError

__all__ = ["CALIBRATION_METHODS", "OPTIONS", "PRECISIONS", "Recipe"]

PRECISIONS = ("fp32", "fp16", "bf16", "int8-dynamic", "int8-static", "int4-weight")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
OPTIONS = (
    "data",
    "calibration_samples",
    "preprocess",
    "calibration_method",
    "per_channel",
    "activation_type",
    "nodes_to_exclude",
    "block_size",
    "symmetric",
    "group_size",
    "ratio",
    "preset",
    "model_type",
    "smooth_quant_alpha",
    "keep_feed_forward_float",
    "coreml_target",
    "tensorrt_profiles",
    "tensorrt_max_dim",
)


@dataclass(frozen=True)
class Recipe:
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgeforgeError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        _check_options(self.options)

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        return cls(data.get("precision", "fp32"), dict(data.get("options", {})))


def _check_options(options: dict[str, Any]) -> None:
    """Names of all options and values of the shared ones; each failure names the option and
    what it takes."""
    for name in options:
        if name not in OPTIONS:
            close = difflib.get_close_matches(name, OPTIONS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise EdgeforgeError(
                f"unknown recipe option {name!r}; {hint}known options: {', '.join(OPTIONS)}"
            )
    try:
        json.dumps(options)
    except (TypeError, ValueError) as exc:
        raise EdgeforgeError(
            f"recipe options must be JSON values (they go into the manifest): {exc}; pass "
            "paths as strings and lists instead of tuples or arrays"
        ) from None
    _choice(options, "calibration_method", CALIBRATION_METHODS)
    _choice(options, "activation_type", ACTIVATION_TYPES)
    _choice(options, "model_type", ("transformer",))
    for name in ("per_channel",):
        if name in options and not isinstance(options[name], bool):
            raise EdgeforgeError(f"recipe option {name} takes true or false, not {options[name]!r}")
    samples = options.get("calibration_samples", 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise EdgeforgeError(
            f"recipe option calibration_samples takes an int >= 1, not {samples!r}"
        )
    block = options.get("block_size", 128)
    if isinstance(block, bool) or not isinstance(block, int) or block < 16 or block & (block - 1):
        raise EdgeforgeError(
            f"recipe option block_size takes a power of two >= 16 (32, 64, 128...), not {block!r}"
        )
    excluded = options.get("nodes_to_exclude", [])
    if not isinstance(excluded, list) or not all(isinstance(n, str) for n in excluded):
        raise EdgeforgeError(
            f"recipe option nodes_to_exclude takes a list of node names, not {excluded!r}"
        )
    if "preprocess" in options:
        from edgeforge.evaluate.data import Preprocess

        Preprocess.parse(options["preprocess"])  # raises naming what is wrong
    if "data" in options and not isinstance(options["data"], str):
        raise EdgeforgeError(
            f"recipe option data takes a folder path as a string, not {options['data']!r}"
        )


def _choice(options: dict[str, Any], name: str, valid: tuple[str, ...]) -> None:
    if name in options and options[name] not in valid:
        raise EdgeforgeError(
            f"recipe option {name} {options[name]!r} is unknown; choose one of {', '.join(valid)}"
        )
