"""Atomic file writes and small JSON/CSV helpers.

Every output of the pipeline goes through :func:`atomic_write` so that an
interrupted job never leaves a half-written file that Snakemake (or a user)
could take for a result: data is written to a temporary file in the same
directory and renamed over the target, which is atomic on POSIX. Outputs get
the mode an ordinary ``open()`` would give them (``0666`` less the umask, so
``0644`` under umask 022), not the ``0600`` of :func:`tempfile.mkstemp`, so
that a group sharing a results folder on a cluster can read them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:  # Linux >= 4.7: no window in which another thread sees a changed umask
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched; a
    full disk (``ENOSPC``) is raised as an ``OSError`` whose ``filename`` is ``path``.
    The temporary name keeps the target's suffix so that writers that infer
    the format from the extension (matplotlib, PIL) still work. The file gets
    mode ``0666 & ~umask`` (see the module docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno == errno.ENOSPC and not err.filename:  # a full disk names no file: name the output
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error if it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: JSON file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


class OutputLockedError(RuntimeError):
    """Another live process holds the lock of an output path."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on output ``path`` (the file ``<path>.lock``) for the ``with`` block.

    A second writer of the same output fails at once with the holder's pid.
    The lock is an ``flock``, which the kernel releases when its process
    exits, even when killed: a lock file left by a dead process does not block.

    Raises:
        OutputLockedError: another live process holds the lock.
    """
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputLockedError(
                f"{path}: another eroseg process (pid {holder}) is writing this output (lock {lock_path}); "
                "wait for it to finish or stop it"
            ) from None
        # The previous holder may have unlinked the file between our open and flock: retry on the new one.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_path
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()  # while still locked, so no other process holds the unlinked inode
        os.close(fd)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` left next to ``path`` when a writer was killed.

    Call it only while holding :func:`exclusive_lock` on ``path`` (no other
    writer can be using them). Returns the removed files.
    """
    path = Path(path)
    removed = []
    # atomic_path's names: ".<stem>.<8 random characters>.tmp<suffix>" (tempfile.mkstemp)
    for tmp in path.parent.glob(f".{glob.escape(path.stem)}.{'?' * 8}.tmp{glob.escape(path.suffix)}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


#: Name of the file in which ``eroseg evaluate --manifest`` lists every result file of one evaluation folder.
EVAL_MANIFEST = "manifest.json"


def write_eval_manifest(path: str | os.PathLike, files: list[str | os.PathLike]) -> None:
    """List ``files`` (every result an evaluation job wrote) in the manifest ``path``, relative to its folder.

    Written last, so a folder with a manifest is a finished job's; a file the manifest lists but the
    folder lacks was removed afterwards, and readers refuse the folder instead of aggregating the rest.

    Raises:
        ValueError: a file outside the manifest's folder.
    """
    write_json(path, {"version": 1, "files": manifest_names(path, files)})


def manifest_names(path: str | os.PathLike, files: list[str | os.PathLike]) -> list[str]:
    """``files`` relative to the folder of manifest ``path`` (sorted, once each).

    Raises:
        ValueError: a file outside that folder.
    """
    folder = Path(path).parent
    names = set()
    for f in files:
        rel = os.path.relpath(f, folder)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise ValueError(f"--manifest {path}: its folder must hold every output, but {f} lies outside it")
        names.add(Path(rel).as_posix())
    return sorted(names)


def eval_folder_files(folder: str | os.PathLike) -> list[Path]:
    """The result files of an evaluation folder: those its manifest lists, all present.

    A folder without a manifest (results gathered by hand) gives its ``*.json`` files, hidden ones
    (temporary files of a killed writer) left out.

    Raises:
        FileNotFoundError: a listed file is missing (named, with the fix), a folder that Snakemake
            made (``.snakemake_timestamp``) has no manifest, or the folder holds no result.
        ValueError: the manifest is not valid.
    """
    folder = Path(folder)
    manifest = folder / EVAL_MANIFEST
    if manifest.is_file():
        data = read_json(manifest)
        if not isinstance(data, dict) or not isinstance(data.get("files"), list):
            raise ValueError(f"{manifest}: not an evaluation manifest (an object with a 'files' list)")
        files = [folder / name for name in data["files"]]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{missing[0]}: missing from its evaluation folder ({len(missing)} of the {len(files)} results "
                f"{manifest} lists); the other results of that model are not used alone: delete {folder} and "
                "rerun (Snakemake evaluates that model again)")
        return files
    if (folder / ".snakemake_timestamp").exists():
        raise FileNotFoundError(f"{folder}: no {EVAL_MANIFEST}, so its evaluation did not finish or the manifest "
                                f"was removed; delete {folder} and rerun")
    files = sorted(f for f in folder.rglob("*.json")
                   if not any(part.startswith(".") for part in f.relative_to(folder).parts))
    if not files:
        raise FileNotFoundError(f"{folder}: folder holds no evaluation JSON")
    return files


def check_writable_dir(path: str | os.PathLike, what: str = "output") -> None:
    """Fail now, not after hours of work, if the folder of ``path`` cannot be written.

    Creates the folder if needed and writes (then removes) a probe file in it.

    Raises:
        PermissionError: naming ``what``, the folder and the reason.
    """
    folder = Path(path).parent
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise PermissionError(
            f"{folder}: cannot write the {what} {Path(path).name} there ({blocker} is a file, not a folder); "
            "choose a writable folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".eroseg-write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(
            f"{folder}: cannot write the {what} {Path(path).name} there ({err.strerror or err}); "
            "choose a writable folder"
        ) from None
