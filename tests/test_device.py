"""GPU slots of eroseg.device, on simulated GPUs (no CUDA needed): k jobs per GPU, one process per slot."""

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eroseg import device as dev

ROOT = Path(__file__).resolve().parents[1]

# A job: take a slot among `gpus` x `k`, say which, hold it until the file `release` appears.
JOB = """
import sys, time, pathlib
from eroseg.device import acquire_gpu_slot
gpus, k, lock_dir, release = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], pathlib.Path(sys.argv[4])
gpu, slot = acquire_gpu_slot(gpus, k, poll=0.05, lock_dir=lock_dir)
print(f"cuda:{gpu} slot {slot}", flush=True)
while not release.exists():
    time.sleep(0.05)
"""


@pytest.fixture(autouse=True)
def _own_locks(monkeypatch, tmp_path):
    # Locks taken in this process stay held until it exits: give each test its own folder.
    monkeypatch.setenv("EROSEG_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def _job(tmp_path, name, gpus=1, k=2):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen([sys.executable, "-c", JOB, str(gpus), str(k), str(tmp_path / "locks"),
                             str(tmp_path / f"release_{name}")], stdout=subprocess.PIPE, text=True, env=env)


def test_two_jobs_share_a_gpu_slot_wise_and_a_third_waits(tmp_path):
    a = _job(tmp_path, "a")
    assert a.stdout.readline().strip() == "cuda:0 slot 0"
    b = _job(tmp_path, "b")
    assert b.stdout.readline().strip() == "cuda:0 slot 1"
    c = _job(tmp_path, "c")
    try:
        time.sleep(1.5)  # ample for a start-up without torch: c is up and polling, but has no slot
        assert c.poll() is None
        assert not select.select([c.stdout], [], [], 0)[0], "the third job got a slot while both were held"
        # The first job ends: its lock goes with its process, and the waiting job takes its slot.
        (tmp_path / "release_a").touch()
        a.wait(timeout=30)
        assert c.stdout.readline().strip() == "cuda:0 slot 0"
        assert b.poll() is None  # the second job kept its slot all along
    finally:
        for name in "abc":
            (tmp_path / f"release_{name}").touch()
        for p in (a, b, c):
            p.wait(timeout=30)


def test_slots_spread_over_gpus_before_sharing(tmp_path):
    got = [dev.acquire_gpu_slot(2, 2, wait=0, lock_dir=tmp_path / "locks") for _ in range(5)]
    assert got == [(0, 0), (1, 0), (0, 1), (1, 1), None]


def test_one_job_per_gpu_by_default_and_wait_can_be_bounded(tmp_path):
    assert dev.acquire_gpu_slot(1, wait=0, lock_dir=tmp_path / "locks") == (0, 0)
    t0 = time.monotonic()
    assert dev.acquire_gpu_slot(1, wait=0.3, poll=0.05, lock_dir=tmp_path / "locks") is None
    assert 0.25 <= time.monotonic() - t0 < 5


def test_select_device_on_simulated_gpus(monkeypatch):
    monkeypatch.setenv("EROSEG_JOBS_PER_GPU", "2")
    two = lambda: ["gpu-aaaa", "gpu-bbbb"]  # noqa: E731
    picks = [dev.select_device("auto", gpu_ids=two) for _ in range(4)]
    assert picks == [torch.device(f"cuda:{i}") for i in (0, 1, 0, 1)]
    assert dev.select_device("auto", gpu_ids=list) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        dev.select_device("cuda", gpu_ids=list)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dev.select_device("auto", gpu_ids=two) == torch.device("cuda:1")


def test_locks_follow_the_physical_gpu_not_its_index(tmp_path):
    # Two SLURM jobs on one node each see their own GPU as cuda:0: neither waits for the other.
    locks = tmp_path / "locks"
    assert dev.acquire_gpu_slot(1, wait=0, lock_dir=locks, gpu_ids=["gpu-1111"]) == (0, 0)
    assert dev.acquire_gpu_slot(1, wait=0, lock_dir=locks, gpu_ids=["gpu-2222"]) == (0, 0)
    # The same physical GPU seen by a third job is held.
    assert dev.acquire_gpu_slot(1, wait=0, lock_dir=locks, gpu_ids=["gpu-2222"]) is None


def test_jobs_per_gpu_env_must_be_a_positive_integer(monkeypatch):
    monkeypatch.delenv("EROSEG_JOBS_PER_GPU", raising=False)
    assert dev.jobs_per_gpu_from_env() == 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("EROSEG_JOBS_PER_GPU", bad)
        with pytest.raises(ValueError, match="EROSEG_JOBS_PER_GPU"):
            dev.jobs_per_gpu_from_env()
