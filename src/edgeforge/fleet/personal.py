"""On-device personalisation: train a small head on one user's samples, keep it only if it helps.

The device side of `edgeforge personalize`. A package (built by `edgeforge.personalize`, server
side) holds the frozen backbone as verified edge artifacts (it returns the released model's
logits and the embedding the head reads), the head's base weights, and the head in each form a
device can train: an ExecuTorch training program, a Core ML updatable model, and the plain
arrays this module trains with numpy. One call does the work for the agent and any app:

    model = PersonalizationPackage.load(DIR).train(samples, labels)
    model.kept, model.reason   # the guard's verdict
    model.predict(feed)        # logits: the personal head's if kept, the base model's otherwise
    model.save(DIR2)

Invariants a caller can rely on:
- this module imports only the standard library, numpy and `edgeforge.errors`; the backbone's
  runtime (onnxruntime, executorch's runtime) and executorch's training module are imported on
  first use; never torch export or a converter (a test asserts it);
- nothing leaves the device: training reads the samples given and writes only where `save` is
  told; `PersonalModel.telemetry()` says that personalisation ran and whether it was kept, with
  no sample, label, count per class or weight in it;
- the guard: the user's samples are split into train and check, `folds` times over (each
  sample is a check sample once, judged by a head trained without it); the personal head is
  kept only if those heads classify more check samples correctly than the base model does on
  the same samples (by `margin`, 1) and its mean log-probability gain on them exceeds
  `guard_z` (1) standard errors (`guard`); then the head trained on all the samples is
  kept. Otherwise it is discarded, `reason` says why, and `predict` returns the base model's
  logits; a run past `time_limit_s` is discarded too;
- the input adapter (`input_adapter.py`): where the package holds the training data's
  aggregates (a model whose input is a flat feature vector), every candidate is "adapter +
  head": a per-feature gain and offset fitted to the user's train samples, the backbone run on
  the adapted inputs, the head trained on that embedding; the guard judges the pair (each
  fold's adapter and head fitted without its check samples), and a kept head keeps its
  adapter (saved beside it, `adapter.npz`), a discarded one drops both;
- a personal model records the backbone's release (name, version, artifact sha256) and refuses
  to run on a package whose backbone differs (`PersonalModel.load(DIR, package)`), so a head
  is never applied to a backbone it was not trained on;
- a package's files are checked against the sha256 it records when it is loaded;
- training stops at `time_limit_s` (the epoch under way finishes its step, no more) and holds
  at most one batch of gradients beside the embeddings.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import tracemalloc
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.input_adapter import InputAdapter, InputStats

__all__ = [
    "FORMS",
    "PACKAGE_FILE",
    "PERSONAL_FILE",
    "BackboneRelease",
    "PersonalModel",
    "PersonalizationPackage",
    "drop_stale_head",
    "personalize_on_device",
]

PACKAGE_FILE = "personalize.json"
PERSONAL_FILE = "personal.json"
SCHEMA = "edgeforge.personalize-package/1"
PERSONAL_SCHEMA = "edgeforge.personal-model/2"  # /2: may hold an input adapter
READ_PERSONAL_SCHEMAS = ("edgeforge.personal-model/1", PERSONAL_SCHEMA)
# The forms a package may hold, best first: the one `train` picks when none is named.
FORMS = ("executorch", "coreml", "head")
# Head layers this module can run and train (what the builder accepts in a head).
LAYER_KINDS = ("linear", "relu", "tanh", "sigmoid", "identity", "flatten")
# The guard's default: by how many standard errors the head's mean log-probability gain on
# the check samples must exceed zero.
GUARD_Z = 1.0
# The input adapter's pull towards the identity, in samples: the fitted gain and offset weigh
# n / (n + ADAPTER_PULL). Chosen on tuning users only (bench/personalize_guard_tuning.py,
# tabular seeds 101 and 104, pulls 0-20: 10 gained most at 20 samples, no user worse).
ADAPTER_PULL = 10.0
# The backbone runtimes this module can run on a device, best first.
BACKBONE_RUNTIMES = ("onnxruntime", "executorch", "openvino")


@dataclass(frozen=True)
class BackboneRelease:
    """Which released model a backbone (and so a head trained on it) belongs to."""

    name: str
    version: int | None
    sha256: str  # the backbone artifact's (or the release's variant artifact's) sha256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneRelease:
        return cls(str(data["name"]), data.get("version"), str(data["sha256"]))

    def __str__(self) -> str:
        version = "unversioned" if self.version is None else f"version {self.version}"
        return f"{self.name} {version} (sha256 {self.sha256[:12]})"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the head in numpy: the same layers the builder exported, forward and backward ------------


def head_forward(
    layers: Sequence[Mapping[str, Any]], params: Mapping[str, np.ndarray], x: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The head's logits for embeddings `x`, and each layer's input (for `head_backward`)."""
    inputs = []
    for layer in layers:
        inputs.append(x)
        kind, name = layer["kind"], layer["name"]
        if kind == "linear":
            x = x @ params[f"{name}.weight"].T
            if f"{name}.bias" in params:
                x = x + params[f"{name}.bias"]
        elif kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "tanh":
            x = np.tanh(x)
        elif kind == "sigmoid":
            x = 1 / (1 + np.exp(-x))
        elif kind == "flatten":
            x = x.reshape(len(x), -1)
        elif kind != "identity":
            raise EdgeforgeError(f"head layer {name} is a {kind}; rebuild the package")
    return x, inputs


def head_backward(
    layers: Sequence[Mapping[str, Any]],
    params: Mapping[str, np.ndarray],
    inputs: Sequence[np.ndarray],
    grad: np.ndarray,
) -> dict[str, np.ndarray]:
    """Gradients of the trainable layers' parameters, given d loss / d logits."""
    grads: dict[str, np.ndarray] = {}
    for layer, x in zip(reversed(layers), reversed(inputs), strict=True):
        kind, name = layer["kind"], layer["name"]
        if kind == "linear":
            weight = params[f"{name}.weight"]
            if layer["trainable"]:
                grads[f"{name}.weight"] = grad.T @ x
                if f"{name}.bias" in params:
                    grads[f"{name}.bias"] = grad.sum(0)
            grad = grad @ weight
        elif kind == "relu":
            grad = grad * (x > 0)
        elif kind == "tanh":
            grad = grad * (1 - np.tanh(x) ** 2)
        elif kind == "sigmoid":
            s = 1 / (1 + np.exp(-x))
            grad = grad * s * (1 - s)
        elif kind == "flatten":
            grad = grad.reshape(x.shape)
    return grads


def _softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient with respect to the logits."""
    shifted = logits - logits.max(1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(1, keepdims=True)
    n = len(labels)
    loss = float(-np.log(probs[np.arange(n), labels] + 1e-12).mean())
    probs[np.arange(n), labels] -= 1
    return loss, probs / n


# -- the backbone: one verified artifact, run in the device's runtime -------------------------


class _Backbone:
    """The frozen backbone in one runtime: inputs to (base logits, embedding)."""

    def __init__(self, runtime: str, path: Path, inputs: list[dict[str, Any]]) -> None:
        self.runtime, self.path, self.inputs = runtime, path, inputs
        if runtime == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            self._session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
            self._run = self._ort
        elif runtime == "executorch":
            from executorch.runtime import Runtime

            self._program = Runtime.get().load_program(path)
            self._method = self._program.load_method("forward")
            self._run = self._executorch
        elif runtime == "openvino":
            import openvino

            core = openvino.Core()
            self._compiled = core.compile_model(
                str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
            )
            self._run = self._openvino
        else:
            raise EdgeforgeError(
                f"the backbone runtime {runtime} cannot run here; use one of "
                f"{', '.join(BACKBONE_RUNTIMES)}"
            )

    def __call__(self, feed: np.ndarray | Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        feeds = self._feeds(feed)
        count = len(next(iter(feeds.values())))
        step = 1 if self.runtime == "executorch" else 256  # ExecuTorch plans for batch 1
        parts = [
            self._run({k: v[i : i + step] for k, v in feeds.items()}) for i in range(0, count, step)
        ]
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(2))

    def _feeds(self, feed: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            if len(self.inputs) != 1:
                names = ", ".join(spec["name"] for spec in self.inputs)
                raise EdgeforgeError(f"the model takes several inputs ({names}); pass a dict")
            feed = {self.inputs[0]["name"]: feed}
        feeds = {}
        for spec in self.inputs:
            if spec["name"] not in feed:
                raise EdgeforgeError(f"the feed lacks the model's input {spec['name']!r}")
            value = np.ascontiguousarray(feed[spec["name"]], dtype=spec.get("dtype", "float32"))
            if value.ndim == len(spec["shape"]) - 1:  # one sample without its batch axis
                value = value[None]
            if list(value.shape[1:]) != list(spec["shape"][1:]):
                raise EdgeforgeError(
                    f"input {spec['name']!r} has shape {list(value.shape)}; the model takes "
                    f"[N, {', '.join(map(str, spec['shape'][1:]))}]"
                )
            feeds[spec["name"]] = value
        return feeds

    def _ort(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, feeds)

    def _executorch(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch  # ExecuTorch's Python runtime takes torch tensors

        tensors = [torch.from_numpy(feeds[spec["name"]]) for spec in self.inputs]
        return [np.asarray(out) for out in self._method.execute(tensors)]

    def _openvino(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._compiled(feeds)
        return [np.asarray(result[out]) for out in self._compiled.outputs]


# -- the package -------------------------------------------------------------------------------


@dataclass
class PersonalizationPackage:
    """A personalisation package on disk: `load` it, then `train` on one user's samples."""

    path: Path
    release: BackboneRelease
    inputs: list[dict[str, Any]]
    classes: int
    layers: list[dict[str, Any]]  # the head, in order: {name, kind, trainable}
    base_params: dict[str, np.ndarray]
    backbones: dict[str, dict[str, Any]]  # runtime -> {file, sha256}
    forms: dict[str, dict[str, Any]]  # form -> {file, ..., "trains_here"?}
    training: dict[str, Any]  # lr, epochs, batch, folds, seed, adapter_pull
    index: dict[str, Any] = field(repr=False)
    # The training data's aggregates for the input adapter; None where the package has none
    # (an image input, or no reference data given when it was built: `index["adapter"]`).
    input_stats: InputStats | None = field(default=None, repr=False)
    runtime: str | None = None  # the backbone runtime asked for; None: the first that runs
    _backbone: _Backbone | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path, *, runtime: str | None = None) -> PersonalizationPackage:
        """Read and check a package folder (every file's sha256). `runtime` picks the backbone;
        by default the first one this device can run."""
        path = Path(path)
        index_file = path / PACKAGE_FILE
        try:
            index = json.loads(index_file.read_text())
        except FileNotFoundError:
            raise EdgeforgeError(
                f"{path} is not a personalisation package (no {PACKAGE_FILE}); build one with "
                "edgeforge personalize"
            ) from None
        except (OSError, ValueError) as exc:
            raise EdgeforgeError(f"{index_file} cannot be read ({exc}); rebuild it") from None
        if index.get("schema") != SCHEMA:
            raise EdgeforgeError(
                f"{index_file} has schema {index.get('schema')!r}, this edgeforge reads "
                f"{SCHEMA}; rebuild the package"
            )
        # A file that differs from what the builder recorded is refused, not trained on.
        for entry in index["files"]:
            file = path / entry["path"]
            if not file.is_file() or _sha256(file) != entry["sha256"]:
                raise EdgeforgeError(
                    f"{file} is missing or differs from the package's record; fetch the "
                    "package again"
                )
        with np.load(path / index["head"]["params"]) as stored:
            params = {name: stored[name].astype(np.float32) for name in stored.files}
        adapter = index.get("adapter") or {}
        stats = InputStats.load(path / adapter["file"]) if adapter.get("file") else None
        package = cls(
            path=path,
            release=BackboneRelease.from_dict(index["release"]),
            inputs=index["inputs"],
            classes=int(index["classes"]),
            layers=index["head"]["layers"],
            base_params=params,
            backbones=index["backbones"],
            forms=index["forms"],
            training=index["training"],
            index=index,
            runtime=runtime,
            input_stats=stats,
        )
        return package

    # -- what runs here ---------------------------------------------------------------------

    def backbone(self) -> _Backbone:
        """The backbone in the first runtime (of the package's) that imports here."""
        if self._backbone is not None:
            return self._backbone
        names = [self.runtime] if self.runtime else list(BACKBONE_RUNTIMES)
        reasons = []
        for name in names:
            entry = self.backbones.get(name)
            if entry is None:
                reasons.append(f"{name}: not in the package")
                continue
            try:
                self._backbone = _Backbone(name, self.path / entry["file"], self.inputs)
            except ImportError as exc:
                reasons.append(f"{name}: {exc}")
                continue
            return self._backbone
        raise EdgeforgeError(
            "no backbone in this package runs here (" + "; ".join(reasons) + "); build it "
            "with --runtime naming this device's runtime"
        )

    def available_forms(self) -> dict[str, str | None]:
        """Each form: None if it trains here, else why not (one line)."""
        found: dict[str, str | None] = {}
        for form in FORMS:
            entry = self.forms.get(form)
            if entry is None:
                found[form] = "not in this package"
            elif entry.get("error"):
                found[form] = f"not built: {entry['error']}"
            elif form == "executorch":
                try:
                    import executorch.extension.training  # noqa: F401
                except ImportError as exc:
                    found[form] = f"executorch's training module is not installed ({exc})"
                else:
                    found[form] = None
            elif form == "coreml":
                found[form] = (
                    "a Core ML updatable model trains inside an app through MLUpdateTask on "
                    f"iOS or macOS; Python has no binding for it (this is {sys.platform}), so "
                    "the package ships it for the app to train"
                )
            else:
                found[form] = None
        return found

    def embed(
        self,
        feed: np.ndarray | Mapping[str, np.ndarray],
        adapter: InputAdapter | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The backbone's logits and embedding for `feed` (the base model's logits when no
        `adapter` is given; with one, the input goes through it first)."""
        backbone = self.backbone()
        if adapter is not None:
            feeds = backbone._feeds(feed)
            name = self.inputs[0]["name"]
            feed = {**feeds, name: adapter(feeds[name])}
        logits, embedding = backbone(feed)
        return logits.astype(np.float32), embedding.reshape(len(embedding), -1).astype(np.float32)

    # -- training ---------------------------------------------------------------------------

    def train(
        self,
        samples: np.ndarray | Mapping[str, np.ndarray],
        labels: Sequence[int] | np.ndarray,
        *,
        form: str | None = None,
        time_limit_s: float = 60.0,
        folds: int | None = None,
        epochs: int | None = None,
        lr: float | None = None,
        seed: int | None = None,
    ) -> PersonalModel:
        """Fit the head to one user's samples on `form` (the best that trains here by default),
        under the guard (see the module docstring); returns the result, kept or not."""
        available = self.available_forms()
        if form is None:
            form = next(name for name in FORMS if available[name] is None)
        elif form not in FORMS:
            raise EdgeforgeError(f"form {form!r} is not one of {', '.join(FORMS)}")
        elif available[form] is not None:
            raise EdgeforgeError(f"form {form} cannot train here: {available[form]}")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= self.classes):
            raise EdgeforgeError(f"labels must be class indices 0..{self.classes - 1}")
        settings = {
            **self.training,
            **{
                k: v
                for k, v in dict(folds=folds, epochs=epochs, lr=lr, seed=seed).items()
                if v is not None
            },
        }
        feeds = self.backbone()._feeds(samples)
        base_logits, embedding = self.embed(feeds)
        if len(embedding) != len(labels):
            raise EdgeforgeError(f"{len(embedding)} samples but {len(labels)} labels")
        raw = feeds[self.inputs[0]["name"]]
        pull = float(settings.get("adapter_pull", ADAPTER_PULL))

        def fitted(rows: np.ndarray) -> tuple[InputAdapter | None, np.ndarray]:
            """The adapter fitted on `rows` (None without statistics) and the embedding of
            every sample through it."""
            if self.input_stats is None:
                return None, embedding
            adapter = InputAdapter.fit(raw[rows], labels[rows], self.input_stats, pull)
            return adapter, self.embed(feeds, adapter)[1]

        folds = _folds(len(labels), int(settings["folds"]), int(settings["seed"]))
        result = PersonalModel(
            release=self.release,
            form=form,
            layers=self.layers,
            params=self.base_params,
            kept=False,
            reason="",
            train_samples=len(labels),
            check_samples=len(labels) if folds else 0,
            _package=self,
        )
        if not folds:
            result.reason = f"{len(labels)} samples are too few to train and check; give 3 or more"
            return result
        trainer = _train_executorch if form == "executorch" else _train_numpy
        tracemalloc.start()
        started = time.perf_counter()
        deadline = started + time_limit_s
        # Each sample, judged by its fold's head: right or not, and the log-probability that
        # head gives its true label.
        personal_hits = np.zeros(len(labels), bool)
        personal_logp = np.zeros(len(labels))
        try:
            # The check: each fold's samples are judged by a head trained without them.
            # The adapter is part of what is checked: it too is fitted without the fold.
            for check_rows in folds:
                train_rows = np.setdiff1d(np.arange(len(labels)), check_rows)
                _, adapted = fitted(train_rows)
                params, _ = trainer(
                    self, adapted[train_rows], labels[train_rows], settings, deadline=deadline
                )
                logits, _ = head_forward(self.layers, params, adapted[check_rows])
                personal_hits[check_rows] = logits.argmax(1) == labels[check_rows]
                personal_logp[check_rows] = _log_probability(logits, labels[check_rows])
            # What is kept is trained on all the samples, as each checked head was on most.
            adapter, adapted = fitted(np.arange(len(labels)))
            params, losses = trainer(self, adapted, labels, settings, deadline=deadline)
        finally:
            result.train_seconds = time.perf_counter() - started
            result.peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        if time.perf_counter() > deadline:
            result.reason = f"discarded: training ran past its {time_limit_s:g} s limit"
            return result
        result.losses = losses
        base_hits = base_logits.argmax(1) == labels
        result.base_accuracy = float(base_hits.mean())
        result.personal_accuracy = float(personal_hits.mean())
        result.kept, result.reason = guard(
            personal_hits,
            base_hits,
            personal_logp - _log_probability(base_logits, labels),
            settings,
        )
        if result.kept:
            result.params, result.adapter = params, adapter
        return result


def _log_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log softmax(logits)[label], per row."""
    shifted = logits - logits.max(1, keepdims=True)
    shifted = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return shifted[np.arange(len(labels)), labels]


def guard(
    personal_hits: np.ndarray,
    base_hits: np.ndarray,
    gains: np.ndarray,
    settings: Mapping[str, Any],
) -> tuple[bool, str]:
    """The guard's verdict on the check samples (each judged by a head trained without it):
    (kept, why). `gains` is, per check sample, the log-probability the personal head gives its
    true label minus the base model's.

    Kept only if both hold:
    - accuracy: the personal head gets at least `margin` (1) more check samples right;
    - evidence beyond the check's noise: the mean log-probability gain exceeds `guard_z` (1)
      standard errors of itself. Accuracy alone counts only the few samples the two models
      disagree on, and with 20 samples a lead of one or two is luck as often as not; the
      log-probability (a proper scoring rule) weighs every check sample and charges a head
      that is confidently wrong, which is what a head fitted to a few samples is when it
      forgot a class the user rarely shows."""
    count = len(gains)
    personal_right, base_right = int(personal_hits.sum()), int(base_hits.sum())
    margin = max(1, int(settings.get("margin", 1)))
    z = float(settings.get("guard_z", GUARD_Z))
    mean = float(gains.mean()) if count else 0.0
    error = float(gains.std(ddof=1) / math.sqrt(count)) if count > 1 else math.inf
    scores = (
        f"it got {personal_right} of {count} check samples right, the base model {base_right}; "
        f"mean log-probability gain {mean:+.3f} (standard error {error:.3f})"
    )
    if personal_right < base_right + margin:
        return False, f"discarded: {scores}; the base model stays"
    if not mean > z * error:
        return False, f"discarded: {scores}, within the check's noise; the base model stays"
    return True, f"kept: {scores}"


def _folds(count: int, folds: int, seed: int) -> list[np.ndarray]:
    """A reproducible split of `count` samples into up to `folds` check sets; [] when there
    are too few samples to train on two and check one."""
    if count < 3:
        return []
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(part) for part in np.array_split(order, min(folds, count)) if len(part)]


def _batches(count: int, settings: Mapping[str, Any]) -> list[list[np.ndarray]]:
    """The batch order of every epoch: the same for every form, so forms can be compared."""
    rng = np.random.default_rng(settings["seed"] + 1)
    batch = int(settings["batch"])
    return [
        np.array_split(order, range(batch, count, batch))
        for order in (rng.permutation(count) for _ in range(int(settings["epochs"])))
    ]


def _train_numpy(
    package: PersonalizationPackage,
    x: np.ndarray,
    y: np.ndarray,
    settings: Mapping[str, Any],
    *,
    deadline: float,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Plain SGD on the trainable layers, in numpy (the runtime-independent form)."""
    base = package.base_params
    params = {name: value.copy() for name, value in base.items()}
    lr, losses = float(settings["lr"]), []
    anchor = float(settings.get("anchor", 0.0))
    for epoch in _batches(len(y), settings):
        total = 0.0
        for rows in epoch:
            logits, inputs = head_forward(package.layers, params, x[rows])
            loss, grad = _softmax_cross_entropy(logits, y[rows])
            for name, value in head_backward(package.layers, params, inputs, grad).items():
                # The anchor: an L2 pull towards the base weights (not towards zero).
                params[name] -= lr * (value + anchor * (params[name] - base[name]))
            total += loss * len(rows)
        losses.append(total / len(y))
        if time.perf_counter() > deadline:
            break
    return params, losses


def _train_executorch(
    package: PersonalizationPackage,
    x: np.ndarray,
    y: np.ndarray,
    settings: Mapping[str, Any],
    *,
    deadline: float,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """SGD through the ExecuTorch training program: its forward and backward compute the loss
    and gradients, ExecuTorch's SGD applies them. Batches are padded to the program's fixed
    batch size with weight 0, so a padded row changes nothing."""
    import torch  # ExecuTorch's Python bindings take and return torch tensors
    from executorch.extension.training import (
        _load_for_executorch_for_training,
        get_sgd_optimizer,
    )

    entry = package.forms["executorch"]
    module = _load_for_executorch_for_training(str(package.path / entry["file"]))
    size, method = int(entry["batch"]), entry["method"]
    anchor = float(settings.get("anchor", 0.0))
    base = {
        name: torch.from_numpy(package.base_params[entry["names"][name]]) for name in entry["names"]
    }
    optimizer = None
    losses = []
    for epoch in _batches(len(y), settings):
        total = 0.0
        for rows in epoch:
            for start in range(0, len(rows), size):
                part = rows[start : start + size]
                xb = np.zeros((size, x.shape[1]), np.float32)
                yb = np.zeros(size, np.int64)
                wb = np.zeros(size, np.float32)
                xb[: len(part)], yb[: len(part)], wb[: len(part)] = x[part], y[part], 1
                out = module.forward_backward(
                    method, (torch.from_numpy(xb), torch.from_numpy(yb), torch.from_numpy(wb))
                )
                if optimizer is None:
                    optimizer = get_sgd_optimizer(
                        module.named_parameters(), float(settings["lr"]), 0, 0, 0, False
                    )
                gradients = module.named_gradients()
                if anchor:  # the same pull towards the base weights as the numpy form
                    current = module.named_parameters()
                    gradients = {
                        name: grad + anchor * (current[name] - base[name])
                        for name, grad in gradients.items()
                    }
                optimizer.step(gradients)
                total += float(out[0]) * len(part)
        losses.append(total / len(y))
        if time.perf_counter() > deadline:
            break
    params = {name: value.copy() for name, value in package.base_params.items()}
    if optimizer is not None:
        for name, tensor in module.named_parameters().items():
            params[entry["names"][name]] = tensor.detach().numpy().copy()
    return params, losses


# -- the result --------------------------------------------------------------------------------


@dataclass
class PersonalModel:
    """A head trained for one user, bound to the backbone release it was trained on."""

    release: BackboneRelease
    form: str
    layers: list[dict[str, Any]]
    params: dict[str, np.ndarray] = field(repr=False)
    kept: bool
    reason: str
    train_samples: int = 0
    check_samples: int = 0
    base_accuracy: float | None = None  # on the user's check samples
    personal_accuracy: float | None = None
    train_seconds: float = 0.0
    peak_bytes: int = 0  # Python-heap peak while training (tracemalloc; numpy arrays count)
    losses: list[float] = field(default_factory=list, repr=False)
    # The per-feature gain and offset applied before the backbone (kept with the head, or None)
    adapter: InputAdapter | None = field(default=None, repr=False)
    _package: PersonalizationPackage | None = field(default=None, repr=False)

    def bind(self, package: PersonalizationPackage) -> PersonalModel:
        """Attach the package whose backbone computes embeddings; refuses any other backbone."""
        if package.release != self.release:
            raise EdgeforgeError(
                f"this personal head was trained on {self.release}, not on {package.release}; "
                "train it again on the new release"
            )
        self._package = package
        return self

    def predict(self, feed: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits for `feed`: the personal head's if kept, else the base model's."""
        if self._package is None:
            raise EdgeforgeError("this personal model has no package; load it with its package")
        if not self.kept:
            return self._package.embed(feed)[0]
        _, embedding = self._package.embed(feed, self.adapter)
        return head_forward(self.layers, self.params, embedding)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PERSONAL_SCHEMA,
            "release": self.release.to_dict(),
            "form": self.form,
            "kept": self.kept,
            "reason": self.reason,
            "train_samples": self.train_samples,
            "check_samples": self.check_samples,
            "base_accuracy": self.base_accuracy,
            "personal_accuracy": self.personal_accuracy,
            "train_seconds": round(self.train_seconds, 4),
            "peak_bytes": self.peak_bytes,
            "losses": [round(loss, 6) for loss in self.losses],
            "layers": self.layers,
            "input_adapter": self.adapter is not None,
        }

    def telemetry(self) -> dict[str, Any]:
        """What may leave the device: that it ran, on which release, whether it was kept."""
        return {
            "kind": "personalize",
            "name": self.release.name,
            "version": self.release.version,
            "ok": self.kept,
            "detail": "kept" if self.kept else "discarded",
            "metrics": {"form": self.form, "train_seconds": round(self.train_seconds, 3)},
        }

    def save(self, path: str | Path) -> Path:
        """Write `personal.json` and the head's weights into `path` (created)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "head.npz", **self.params)
        data = {**self.to_dict(), "params": "head.npz", "params_sha256": _sha256(path / "head.npz")}
        if self.adapter is not None:
            np.savez(path / "adapter.npz", **self.adapter.to_arrays())
            data.update(adapter="adapter.npz", adapter_sha256=_sha256(path / "adapter.npz"))
        else:
            (path / "adapter.npz").unlink(missing_ok=True)
        temporary = path / f".{PERSONAL_FILE}.tmp"
        temporary.write_text(json.dumps(data, indent=2))
        temporary.replace(path / PERSONAL_FILE)
        return path

    @classmethod
    def load(cls, path: str | Path, package: PersonalizationPackage) -> PersonalModel:
        """Read a saved personal model and bind it to `package`: refused (EdgeforgeError) when
        the package's backbone is not the one it was trained on."""
        path = Path(path)
        try:
            data = json.loads((path / PERSONAL_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise EdgeforgeError(f"{path} holds no readable personal model ({exc})") from None
        if data.get("schema") not in READ_PERSONAL_SCHEMAS:
            raise EdgeforgeError(f"{path / PERSONAL_FILE} is not a personal model")
        adapter = None
        # The adapter is part of the personal model: a head trained on adapted inputs is never
        # applied without its adapter.
        for key in ("params", "adapter"):
            if key in data and _sha256(path / data[key]) != data[f"{key}_sha256"]:
                raise EdgeforgeError(f"{path / data[key]} differs from its record; retrain")
        with np.load(path / data["params"]) as stored:
            params = {name: stored[name] for name in stored.files}
        if "adapter" in data:
            with np.load(path / data["adapter"]) as stored:
                adapter = InputAdapter.from_arrays(stored)
        model = cls(
            release=BackboneRelease.from_dict(data["release"]),
            form=data["form"],
            layers=data["layers"],
            params=params,
            kept=bool(data["kept"]),
            reason=data["reason"],
            train_samples=data["train_samples"],
            check_samples=data["check_samples"],
            base_accuracy=data["base_accuracy"],
            personal_accuracy=data["personal_accuracy"],
            train_seconds=data["train_seconds"],
            peak_bytes=data["peak_bytes"],
            losses=data["losses"],
            adapter=adapter,
        )
        return model.bind(package)


# -- what the agent calls ----------------------------------------------------------------------


def personalize_on_device(
    package: str | Path | PersonalizationPackage,
    samples: np.ndarray | Mapping[str, np.ndarray],
    labels: Sequence[int] | np.ndarray,
    out: str | Path,
    *,
    form: str | None = None,
    time_limit_s: float = 60.0,
) -> PersonalModel:
    """The agent's one call: train under the guard and store the head at `out` only if it was
    kept. When it was discarded, a head already at `out` stays if it was trained on this
    release and is dropped otherwise. Returns the result; its `telemetry()` is all that may
    be reported."""
    if not isinstance(package, PersonalizationPackage):
        package = PersonalizationPackage.load(package)
    model = package.train(samples, labels, form=form, time_limit_s=time_limit_s)
    out = Path(out)
    if model.kept:
        model.save(out)
    else:
        drop_stale_head(out, package.release)
    return model


def drop_stale_head(path: str | Path, release: BackboneRelease) -> bool:
    """Delete the personal head at `path` unless it was trained on `release` (call it whenever
    the active release changes or rolls back); True when something was deleted. A head whose
    record cannot be read is deleted too: it cannot prove which backbone it belongs to."""
    import shutil

    path = Path(path)
    if not path.exists():
        return False
    try:
        recorded = json.loads((path / PERSONAL_FILE).read_text())["release"]
        if BackboneRelease.from_dict(recorded) == release:
            return False
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shutil.rmtree(path)
    return True
