"""One atomic writer (`stimuli.files`): a file is whole or not there, and every writer uses it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from stimuli.files import atomic_path, to_plain, write_atomic, write_json

REPO = Path(__file__).resolve().parents[1]


def test_bytes_and_text_replace_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.txt"  # the folder is made
    write_atomic(path, "first")
    write_atomic(path, b"second \xe2\x9c\x93")
    assert path.read_text(encoding="utf-8") == "second \u2713"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.name.startswith(".figure.png.") and tmp.name.endswith(".part.png")  # suffix last
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer died")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]


def test_np_savez_keeps_the_name_it_was_given(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "traces.npz") as tmp:
        np.savez(tmp, a=np.arange(3))  # adds `.npz` to a name without it
    assert np.load(tmp_path / "traces.npz")["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traces.npz"]


def test_one_json_converter_for_numpy_paths_and_nan(tmp_path: Path) -> None:
    payload = {"cc": np.float32(0.5), "ids": np.arange(2), "n": np.int64(3), "ok": np.bool_(True),
               "file": tmp_path / "x.h5", "rows": ({"r": np.array([1.5, np.nan])},), 7: "seven"}
    read = json.loads(write_json(tmp_path / "p.json", payload).read_text())
    assert read["cc"] == 0.5 and read["ids"] == [0, 1] and read["n"] == 3 and read["ok"] is True
    assert read["file"] == str(tmp_path / "x.h5") and read["7"] == "seven"
    assert math.isnan(read["rows"][0]["r"][1])  # Python's json reads NaN back
    assert to_plain({"x": float("inf"), "y": np.array([np.nan])}, nan_as_null=True) == {"x": None, "y": [None]}
    with pytest.raises(TypeError, match="cannot write object as JSON"):
        to_plain(object())


def test_no_module_renames_a_temporary_file_by_hand() -> None:
    # The two writers that stream into one temporary file for minutes (a recording's copy, a
    # stimulus uploaded in parts) commit it through `durable_replace`; everything else through
    # `atomic_path`, `write_atomic` or `write_json`.
    pattern = re.compile(r"os\.replace\(|os\.rename\(|\btmp\w*\.(replace|rename)\(")
    found = [f"{p.relative_to(REPO)}:{n}" for pkg in ("stimuli", "rig_bridge", "vist_model", "insilico")
             for p in sorted((REPO / pkg).rglob("*.py")) if p.name != "files.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
