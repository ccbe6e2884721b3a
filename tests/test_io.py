"""Atomic writes: outputs get the umask's mode, failures leave nothing behind; one writer per output."""

from __future__ import annotations

import contextlib
import os
import stat

import numpy as np
import pytest

from eroseg.io import (
    OutputLockedError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    exclusive_lock,
    read_json,
    write_json,
)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_respect_umask(tmp_path, mask, expected):
    with umask(mask):
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_bytes(tmp_path / "b.bin", b"\0")
        write_json(tmp_path / "sub" / "c.json", {"k": 1})
        with atomic_path(tmp_path / "d.npz") as tmp:  # a writer that opens the path itself
            np.savez(tmp, a=np.arange(3))
        # A plain open() under the same umask, for reference.
        (tmp_path / "plain.txt").write_text("x")
    assert mode(tmp_path / "plain.txt") == expected
    for name in ("a.txt", "b.bin", "sub/c.json", "d.npz"):
        assert mode(tmp_path / name) == expected, name
    assert read_json(tmp_path / "sub" / "c.json") == {"k": 1}


def test_umask_is_left_unchanged(tmp_path):
    with umask(0o027):
        atomic_write_text(tmp_path / "a.txt", "x")
        assert os.umask(0o027) == 0o027


def test_overwrite_takes_new_mode_and_content(tmp_path):
    target = tmp_path / "t.txt"
    with umask(0o077):
        atomic_write_text(target, "old")
    assert mode(target) == 0o600
    with umask(0o022):
        atomic_write_text(target, "new")
    assert mode(target) == 0o644 and target.read_text() == "new"


def test_failed_write_leaves_target_and_no_temporary(tmp_path):
    target = tmp_path / "t.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with exclusive_lock(tmp_path / "e.json"):
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            with exclusive_lock(tmp_path / "e.json"):
                pass
    with exclusive_lock(tmp_path / "e.json"):  # released
        pass
