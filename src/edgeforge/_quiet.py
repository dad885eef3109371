"""Keep other libraries' chatter off the user's terminal: one mechanism for every process.

What the runtimes' libraries print (absl/TensorFlow banners, torchao's and coremltools' import
warnings, ONNX Runtime's calibrator lines, XNNPACK's delegate line, progress bars) is silenced
at its source:
- `quiet_libraries` sets the environment variables native libraries read when they load
  (absl/TensorFlow, glog, torch's C++ log, OpenMP, tqdm) without overriding a value the user
  set, and raises the Python log levels of the libraries that log on import. The CLI calls it
  before any heavy import; the fork server calls it before its preloads, so every child
  inherits it.
- `capture_output` sends a child process's file descriptors 1 and 2 (Python's prints and C's
  alike) into a log file that the parent attaches to the result only when the job failed.
- `show_warning` prints a warning of edgeforge's own as one `edgeforge: warning:` line on
  stderr; another library's warning is shown only when verbose.

`EDGEFORGE_VERBOSE=1` (the CLI's `--verbose`) turns all of it off: everything passes through.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "VERBOSE_ENV",
    "capture_output",
    "flush_native_streams",
    "log_tail",
    "native_output_to",
    "quiet_libraries",
    "real_cause",
    "set_verbose",
    "show_warning",
    "verbose",
]

VERBOSE_ENV = "EDGEFORGE_VERBOSE"

# Read by native libraries when they load; set only where the user has not chosen a value.
_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # absl/TensorFlow/LiteRT C++ logs (oneDNN banner, XNNPACK)
    "GLOG_minloglevel": "3",  # glog users
    "GRPC_VERBOSITY": "ERROR",  # TensorFlow imports gRPC
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # c10 warnings
    "KMP_WARNINGS": "0",  # Intel OpenMP's deprecation notes
    "TQDM_DISABLE": "1",  # converters' progress bars (coremltools, NNCF)
}

# Libraries that log warnings on import or per call (torchao's missing kernels, coremltools'
# untested-version notes, NNCF's and ONNX Runtime's progress, absl's pre-init notice).
_LOGGERS = (
    "torch.utils._pytree",  # deprecation notes of register_constant on each export
    "absl",
    "ai_edge_quantizer",
    "coremltools",
    "executorch",
    "jax",
    "litert_torch",
    "nncf",
    "onnxruntime",
    "onnxscript",
    "openvino",
    "tensorflow",
    "torchao",
)

_PACKAGE = str(Path(__file__).resolve().parent)


def verbose() -> bool:
    """True when the user asked to see every library's output (`--verbose`)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    """Set verbosity for this process and the processes it starts (they read the variable)."""
    if on:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


def quiet_libraries() -> None:
    """Silence other libraries' logs at their source (nothing when verbose); idempotent.

    Call it before the libraries are imported: native ones read their variables when they
    load, and Python ones create their loggers on import."""
    if verbose():
        return
    for key, value in _ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` for the CLI: ours as one line on stderr, others' only when
    verbose (a library's deprecation notes are for its own users, not ours)."""
    if not verbose() and not str(filename).startswith(_PACKAGE):
        return
    print(f"edgeforge: warning: {message}", file=sys.stderr)


# -- child processes -------------------------------------------------------------------------


def capture_output(log: Path) -> None:
    """Send this process's stdout and stderr, from Python and from C, into the file `log`
    (for the rest of the process: meant for a child that ends with its job)."""
    flush_native_streams()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


@contextlib.contextmanager
def native_output_to(log: Path) -> Iterator[None]:
    """For the block, send file descriptors 1 and 2 (C's prints and Python's) into `log`, for a
    library that logs from C in our own process (ExecuTorch's cpuinfo lines); they come back
    after it. Nothing changes when verbose."""
    if verbose():
        yield
        return
    flush_native_streams()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        flush_native_streams()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (fd, *saved):
            os.close(descriptor)


def flush_native_streams() -> None:
    """Flush Python's and C's buffered output, so what was printed reaches its file now."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


def log_tail(log: Path, lines: int = 40) -> str:
    """The last `lines` non-blank lines of a captured log ('' when there is none)."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return ""
    kept = [line.rstrip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A message that points at output printed before it instead of saying what went wrong
# (torch.export.load: "check the warnings above"; exir: "read the error messages above").
_POINTS_ABOVE = re.compile(
    r"\b(warnings?|errors?|error messages?|logs?|stack ?trace|output)\s+above\b", re.I
)
# `Type: text` at a line's start or after a log prefix ("W1205 ... __init__.py:348] ").
_EXCEPTION_LINE = re.compile(
    r"(?:^|[\s\]])((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Failure)): (.+)$"
)


def real_cause(message: str, log_text: str) -> str:
    """`message`, and when it only points at output printed above it, the last exception line
    in that output (`Type: text`), so the one line says what actually went wrong."""
    if not _POINTS_ABOVE.search(message):
        return message
    for line in reversed(log_text.splitlines()):
        match = _EXCEPTION_LINE.search(line)
        if match and not _POINTS_ABOVE.search(match.group(2)):
            cause = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2).strip()}"[:300]
            return f"{message} [cause: {cause}]"
    return message
