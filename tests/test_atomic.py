from __future__ import annotations

import pytest

from tdkstain.plumbing.atomic import atomic_path, write_text_atomic


def test_atomic_write_replaces_only_on_success(tmp_path):
    final = tmp_path / "out" / "a.txt"
    write_text_atomic(final, "first")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert final.read_text() == "first"
    assert [p.name for p in final.parent.iterdir()] == ["a.txt"], "temporary file left behind"


def test_atomic_path_keeps_suffix_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "x.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"data")
    assert (tmp_path / "x.png").read_bytes() == b"data"
