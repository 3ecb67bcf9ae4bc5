"""Files are written whole or not at all (resdist.atomic)."""

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from resdist.atomic import atomic_path, remove_stale_temporaries, write_text_atomic


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"good")
    with pytest.raises(OSError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert path.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_process_killed_mid_write_leaves_the_file_whole_and_its_temporary_is_removed_later(
        tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"good")
    code = textwrap.dedent(f"""
        import os, signal
        from resdist.atomic import atomic_path
        with atomic_path({str(path)!r}) as tmp:
            tmp.write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert got.returncode == -9
    assert path.read_bytes() == b"good"
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].name.startswith(".model.pt.")
    mine = tmp_path / f".model.pt.{os.getpid()}.abc.tmp"  # this process is alive: kept
    mine.write_bytes(b"")
    assert remove_stale_temporaries(path) == stale
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "model.pt"]


def test_files_are_readable_like_files_written_with_open(tmp_path):
    write_text_atomic(tmp_path / "a.json", "{}")
    (tmp_path / "b.json").write_text("{}")
    mode = stat.S_IMODE
    assert mode((tmp_path / "a.json").stat().st_mode) == mode((tmp_path / "b.json").stat().st_mode)
