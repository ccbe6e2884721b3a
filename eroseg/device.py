"""Device selection: ``auto`` picks a CUDA GPU that no other eroseg job holds.

Snakemake limits the number of concurrent GPU jobs with ``--resources gpu=N``
but does not set ``CUDA_VISIBLE_DEVICES``, so several jobs would all land on
GPU 0. Each job therefore takes an exclusive lock file per GPU (``flock``,
released automatically when the process exits, even when it is killed) and
uses the first GPU whose lock it gets.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_held_locks: list = []  # keep lock files open for the life of the process


def _lock_dir() -> Path:
    d = Path(os.environ.get("EROSEG_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "eroseg-gpu-locks"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def select_device(device: str = "auto") -> torch.device:
    """Resolve ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` (and plain ``cuda``) returns the CPU when no GPU is visible, else
    the first visible GPU whose lock this process acquires. When every GPU is
    locked it falls back to the one with the most free memory, with a warning.
    Under ``torchrun`` (``LOCAL_RANK`` set) the local rank's GPU is used.
    """
    if device not in ("auto", "cuda"):
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        return dev
    if not torch.cuda.is_available():
        if device == "cuda":
            raise ValueError("device 'cuda' requested but CUDA is not available")
        return torch.device("cpu")
    if "LOCAL_RANK" in os.environ:
        return torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    n = torch.cuda.device_count()
    for i in range(n):
        f = open(_lock_dir() / f"gpu{i}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _held_locks.append(f)
        log.info("using cuda:%d (lock %s)", i, f.name)
        return torch.device(f"cuda:{i}")
    free = [torch.cuda.mem_get_info(i)[0] for i in range(n)]
    best = max(range(n), key=free.__getitem__)
    log.warning("all %d GPUs are held by other eroseg jobs; sharing cuda:%d (most free memory)", n, best)
    return torch.device(f"cuda:{best}")
