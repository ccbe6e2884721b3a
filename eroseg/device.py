"""Device selection: ``auto`` picks a CUDA GPU slot that no other eroseg job holds.

Snakemake limits the number of concurrent GPU jobs with ``--resources gpu=N``
but does not set ``CUDA_VISIBLE_DEVICES``, so several jobs would all land on
GPU 0. Each job therefore takes an exclusive lock file per *slot* (``flock``,
released automatically when the process exits, even when it is killed): a GPU
has ``jobs_per_gpu`` slots (default 1), so light jobs (the embedded default's
evaluations and trainings use a few percent of a GPU) can share one GPU, one
process per slot. Slots are handed out GPU by GPU before any GPU gets a second
job, and a job that finds every slot held waits for one to free up. Lock files
are named by the GPU's UUID, not its index: two jobs that each see one GPU as
``cuda:0`` (SLURM jobs on one node, ``CUDA_VISIBLE_DEVICES``) only wait for each
other when it is the same physical GPU.

With ``jobs_per_gpu = k`` and N GPUs, run Snakemake with ``--resources gpu=N*k``
and export ``EROSEG_JOBS_PER_GPU=k`` (the workflow's ``resources.jobs_per_gpu``)
so that Snakemake starts as many GPU jobs as there are slots.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_held_locks: list = []  # keep lock files open for the life of the process

#: Environment variable giving the number of jobs that share one GPU (default 1).
JOBS_PER_GPU_ENV = "EROSEG_JOBS_PER_GPU"


def _lock_dir() -> Path:
    d = Path(os.environ.get("EROSEG_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "eroseg-gpu-locks"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def jobs_per_gpu_from_env() -> int:
    """``EROSEG_JOBS_PER_GPU`` as a positive integer (1 when unset).

    Raises:
        ValueError: the variable is set to something other than a positive integer.
    """
    text = os.environ.get(JOBS_PER_GPU_ENV, "").strip()
    if not text:
        return 1
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise ValueError(f"{JOBS_PER_GPU_ENV}={text!r}; expected a positive integer (jobs sharing one GPU)")
    return k


def _try_slot(path: Path):
    f = open(path, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def acquire_gpu_slot(
    num_gpus: int,
    jobs_per_gpu: int = 1,
    *,
    wait: float | None = None,
    poll: float = 0.5,
    lock_dir: str | os.PathLike | None = None,
    gpu_ids: list[str] | None = None,
) -> tuple[int, int] | None:
    """Take a free slot ``(gpu, slot)`` among ``num_gpus * jobs_per_gpu`` and hold it for the life of the process.

    Slot 0 of every GPU comes before slot 1 of any, so jobs spread over the
    GPUs before they share one.

    Args:
        num_gpus: GPUs to choose from (cuda:0 .. cuda:num_gpus-1).
        jobs_per_gpu: slots per GPU, i.e. jobs that may run on one GPU at once.
        wait: seconds to wait for a slot when all are held (None: as long as it takes, 0: not at all).
        poll: seconds between tries while waiting.
        lock_dir: folder of the lock files (default ``$EROSEG_GPU_LOCK_DIR`` or ``<tmp>/eroseg-gpu-locks``).
        gpu_ids: a stable name per GPU for its lock files (its UUID); default ``gpu<index>``.

    Returns:
        ``(gpu, slot)``, or None when no slot freed up within ``wait`` seconds.

    Raises:
        ValueError: ``num_gpus`` < 1, ``jobs_per_gpu`` < 1, or ``gpu_ids`` not one per GPU.
    """
    if num_gpus < 1 or jobs_per_gpu < 1:
        raise ValueError(f"acquire_gpu_slot: num_gpus={num_gpus}, jobs_per_gpu={jobs_per_gpu}; expected both >= 1")
    if gpu_ids is not None and len(gpu_ids) != num_gpus:
        raise ValueError(f"acquire_gpu_slot: {len(gpu_ids)} gpu_ids for num_gpus={num_gpus}")
    if gpu_ids:
        names = [re.sub(r"[^A-Za-z0-9_.-]", "_", str(g)) for g in gpu_ids]
    else:
        names = [f"gpu{i}" for i in range(num_gpus)]
    d = Path(lock_dir) if lock_dir is not None else _lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    deadline = None if wait is None else time.monotonic() + wait
    said = False
    while True:
        for slot in range(jobs_per_gpu):
            for gpu in range(num_gpus):
                f = _try_slot(d / f"{names[gpu]}.slot{slot}.lock")
                if f is not None:
                    _held_locks.append(f)
                    log.info("using cuda:%d, slot %d of %d (lock %s)", gpu, slot + 1, jobs_per_gpu, f.name)
                    return gpu, slot
        if deadline is not None and time.monotonic() >= deadline:
            return None
        if not said:
            log.info("all %d GPU slots (%d GPUs x %d jobs) are held by other eroseg jobs; waiting for one",
                     num_gpus * jobs_per_gpu, num_gpus, jobs_per_gpu)
            said = True
        time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))


def visible_gpu_ids() -> list[str]:
    """One stable id per visible CUDA GPU: its UUID where torch reports one, else its index (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    ids = []
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        ids.append(f"gpu-{uuid}" if uuid else f"gpu{i}")
    return ids


def select_device(
    device: str = "auto",
    *,
    jobs_per_gpu: int | None = None,
    wait: float | None = None,
    gpu_ids: Callable[[], list[str]] | None = None,
):
    """Resolve ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` (and plain ``cuda``) returns the CPU when no GPU is visible, else
    the GPU of the first free slot (:func:`acquire_gpu_slot`), waiting while
    every slot is held. Under ``torchrun`` (``LOCAL_RANK`` set) the local rank's
    GPU is used.

    Args:
        device: the requested device.
        jobs_per_gpu: jobs that may share one GPU (default: ``$EROSEG_JOBS_PER_GPU`` or 1).
        wait: seconds to wait for a slot (None: as long as it takes); when none frees up,
            the GPU with the most free memory is shared, with a warning.
        gpu_ids: lists the visible GPUs' ids (default :func:`visible_gpu_ids`); tests pass their own.

    Returns:
        A ``torch.device``.

    Raises:
        ValueError: a CUDA device was asked for but CUDA is not available, or
            ``EROSEG_JOBS_PER_GPU`` is not a positive integer.
    """
    import torch

    list_gpus = gpu_ids or visible_gpu_ids
    if device not in ("auto", "cuda"):
        dev = torch.device(device)
        if dev.type == "cuda" and not list_gpus():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        return dev
    ids = list_gpus()
    n = len(ids)
    if n == 0:
        if device == "cuda":
            raise ValueError("device 'cuda' requested but CUDA is not available")
        return torch.device("cpu")
    if "LOCAL_RANK" in os.environ:
        return torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    k = jobs_per_gpu_from_env() if jobs_per_gpu is None else jobs_per_gpu
    got = acquire_gpu_slot(n, k, wait=wait, gpu_ids=ids)
    if got is not None:
        return torch.device(f"cuda:{got[0]}")
    free = [torch.cuda.mem_get_info(i)[0] for i in range(n)]
    best = max(range(n), key=free.__getitem__)
    log.warning("all %d GPU slots are held by other eroseg jobs; sharing cuda:%d (most free memory)", n * k, best)
    return torch.device(f"cuda:{best}")
