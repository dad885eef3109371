"""Class 1 of issue 13: nothing in a model file runs code.

A `.pt2` archive (or any zip named `.pth`) whose embedded pickle carries a `__reduce__`
payload is refused before torch opens it; the payload would create a marker file, and the
marker must never appear. The reproducers are real archives from `torch.export.save` with
one member rewritten, as an attacker would do it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch

from edgeforge import EdgeforgeError, cli, load
from edgeforge._archive_check import check_torch_archive


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class _Payload:
    """Unpickling this creates `marker` and returns valid example inputs, so an unsafe load
    would both run the code and succeed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        code = (
            f"(open({str(self.marker)!r}, 'w').close(), "
            "((__import__('torch').randn(1, 4),), {}))[1]"
        )
        return (eval, (code,))


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    program = torch.export.export(_Tiny(), (torch.randn(1, 4),))
    torch.export.save(program, str(path))
    return path


def _rewrite(source: Path, target: Path, member_part: str, data: bytes) -> Path:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        replaced = False
        for info in zin.infolist():
            content = zin.read(info.filename)
            if member_part in info.filename:
                content, replaced = data, True
            zout.writestr(info.filename, content)
    assert replaced, f"no member containing {member_part!r} in {source}"
    return target


def _torch_save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _hostile(clean_pt2: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    payload = _torch_save(_Payload(marker))
    return _rewrite(clean_pt2, tmp_path / name, "sample_inputs", payload), marker


def test_clean_pt2_still_loads(clean_pt2: Path) -> None:
    check_torch_archive(clean_pt2)  # the positive control: a real archive passes


def test_pt2_pickle_payload_never_runs(clean_pt2: Path, tmp_path: Path, capsys) -> None:
    hostile, marker = _hostile(clean_pt2, tmp_path, "evil.pt2")
    assert cli.main(["inspect", str(hostile)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeforge: error:") and "builtins.eval" in err and "\n" not in err
    assert not marker.exists()


def test_pth_zip_pickle_payload_never_runs(clean_pt2: Path, tmp_path: Path, capsys) -> None:
    hostile, marker = _hostile(clean_pt2, tmp_path, "evil.pth")
    assert cli.main(["inspect", str(hostile)]) == 2
    assert "weights_only" in capsys.readouterr().err
    assert not marker.exists()


def test_torch_save_checkpoint_named_pth_with_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    hostile = tmp_path / "weights.pth"
    hostile.write_bytes(_torch_save({"state": _Payload(marker)}))
    with pytest.raises(EdgeforgeError, match=r"imports builtins\.eval"):
        load(hostile)
    assert not marker.exists()


def test_legacy_pickle_in_archive_refused(clean_pt2: Path, tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "PWNED"
    legacy = pickle.dumps(_Payload(marker), protocol=2)  # torch.load would use the full unpickler
    hostile = _rewrite(clean_pt2, tmp_path / "legacy.pt2", "sample_inputs", legacy)
    with pytest.raises(EdgeforgeError, match="legacy format"):
        load(hostile)
    assert not marker.exists()


def test_pickled_weight_with_stack_global_refused(clean_pt2: Path, tmp_path: Path) -> None:
    import pickle

    # Protocol 4 uses STACK_GLOBAL, which the safe unpickler lacks: torch would retry unsafely.
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as nested:
        nested.writestr("archive/data.pkl", pickle.dumps({"a": 1}, protocol=4))
    hostile = _rewrite(clean_pt2, tmp_path / "p4.pt2", "sample_inputs", inner.getvalue())
    with pytest.raises(EdgeforgeError, match="opcode"):
        check_torch_archive(hostile)


def test_zip_bomb_member_refused_without_reading_it(clean_pt2: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(clean_pt2) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        with zout.open("tiny/data/sample_inputs/extra.pkl", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(300):  # 300 MB of zeros, a few hundred KB deflated
                member.write(chunk)
    with pytest.raises(EdgeforgeError, match="more than edgeforge reads"):
        check_torch_archive(bomb)


def test_torchscript_archive_refused(tmp_path: Path) -> None:
    scripted = torch.jit.script(_Tiny())
    path = tmp_path / "scripted.pth"
    torch.jit.save(scripted, str(path))
    with pytest.raises(EdgeforgeError, match="TorchScript"):
        load(path)


def test_module_reference_does_not_put_current_folder_first(tmp_path: Path, monkeypatch) -> None:
    import sys

    from edgeforge._torch_export import _import_from_cwd_too

    # A file in the current folder named like an installed module must not shadow it.
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    monkeypatch.delitem(sys.modules, "json")
    assert hasattr(_import_from_cwd_too("json"), "dumps")
