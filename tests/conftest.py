"""Shared test fixtures: the toy tasks and models, the tiny U-Net config and the Snakemake runner.

Test modules import these names from here (``from tests.conftest import ...``) instead of from
each other; pytest also loads this file before any test module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="session", autouse=True)
def shared_snakefile_cache(tmp_path_factory):
    """One Snakefile cache ($EROSEG_CACHE_DIR: the attack registry's summary and the checked attack settings)
    for every Snakemake run of the session, instead of one per test folder: each cold one imports torch."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EROSEG_CACHE_DIR", str(tmp_path_factory.mktemp("snakefile-cache")))
        yield


# The smallest smp U-Net the tests train: ResNet-18 encoder cut at depth 3, 8-channel decoder.
TINY_UNET = {"arch": "Unet", "encoder": "resnet18", "kwargs": {"encoder_depth": 3, "decoder_channels": [8, 8, 8]}}


# ------------------------------------------------------------------ training toy task
class HalfSplit(torch.utils.data.Dataset):
    """Left half class 0, right half class 1, colours noisy: learnable in a few steps.

    Pixel (0, 0) of every label is void (255). ``nan_at`` puts NaN into those images (the NaN guard).
    """

    def __init__(self, n=16, size=16, seed=0, nan_at=None):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.zeros(n, size, size, dtype=torch.long)
        self.labels[:, :, size // 2:] = 1
        self.labels[:, 0, 0] = 255
        base = torch.where(self.labels.unsqueeze(1) == 1, 0.7, 0.3).float().expand(n, 3, size, size)
        self.images = (base + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
        if nan_at is not None:
            self.images[nan_at] = float("nan")

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


# ------------------------------------------------------------------ attack toy task
TOY_CLASSES = 4
TOY_SIZE = 32
TOY_EPS = {"linf": 8 / 255, "l2": 1.5}  # L2 1.5 over 3x32x32 values: an rms of 0.027 per value
ATTACK_NAMES = ["fgsm", "pgd", "segpgd", "cospgd", "eroseg"]


def toy_batch(n, size=TOY_SIZE, seed=0):
    """Four classes laid out as shifted quadrants, each with its own colour plus noise; row 0 and a 3x3 block void."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    base = (yy >= size // 2).long() * 2 + (xx >= size // 2).long()
    shifts = torch.randint(-size // 4, size // 4 + 1, (n, 2), generator=g)
    labels = torch.stack([torch.roll(base, (int(a), int(b)), dims=(0, 1)) for a, b in shifts])
    # Colours 0.05 apart with noise 0.02: learnable in seconds, yet within reach of eps = 8/255.
    colours = torch.tensor([[0.4, 0.4, 0.4], [0.45, 0.4, 0.4], [0.4, 0.45, 0.4], [0.4, 0.4, 0.45]])
    images = colours[labels].permute(0, 3, 1, 2) + 0.02 * torch.randn(n, 3, size, size, generator=g)
    labels[:, 0, :] = 255
    labels[:, 10:13, 20:23] = 255
    return images.clamp(0, 1), labels


class ToyNet(nn.Module):
    """3 -> TOY_CLASSES channels; the [0, 1] -> standardised normalisation lives inside, as the model contract says."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, TOY_CLASSES, 1))

    def forward(self, x):
        return self.net((x - 0.42) / 0.05)


def attack_params(name, norm="linf", **kw):
    """Parameters of attack ``name`` on the toy task: eps of ``norm``, 5 steps of eps/4 for iterative attacks."""
    eps = TOY_EPS[norm]
    p = dict(eps=eps, norm=norm)
    if name != "fgsm":
        p.update(step_size=eps / 4, steps=5)
    p.update(kw)
    return p


# ------------------------------------------------------------------ Snakemake
def snakemake_env(**extra: str) -> dict:
    """The environment of a Snakemake run: figures headless, this interpreter's bin/ first on PATH."""
    env = dict(os.environ, MPLBACKEND="Agg", **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """``python -m snakemake`` on the repository's Snakefile, run in ``workdir``, then ``args``."""
    return [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--snakefile", str(ROOT / "Snakefile"),
            *args]


def run_snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None
                  ) -> subprocess.CompletedProcess:
    """Run Snakemake in ``workdir`` (``--cores 2`` unless ``args`` say otherwise); fail with its output."""
    if not any(a in ("--cores", "-c") or a.startswith("--cores=") for a in args):
        args = ("--cores", "2", *args)  # options first: a target after a list option would join its list
    res = subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True,
                         env=env or snakemake_env(), cwd=workdir)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}")
    return res


def copy_configs(workdir: Path) -> Path:
    """Copy config/ into ``workdir`` (each test changes its own copy); returns the copy."""
    return Path(shutil.copytree(ROOT / "config", Path(workdir) / "config"))


# ------------------------------------------------------------------ the tiny config's whole pipeline
TINY_RUN_CONFIG = "config/tests.yaml"


def pytest_collection_modifyitems(session, config, items):
    """Tests that read the tiny pipeline's results run last, so the others overlap the run (see below)."""
    items.sort(key=lambda item: "tiny_run" in item.fixturenames)  # stable: file order kept within each part


@pytest.fixture(scope="session", autouse=True)
def tiny_run_started(request, tmp_path_factory, shared_snakefile_cache):
    """Start the tiny config's whole pipeline in the background when a selected test needs it (``tiny_run``).

    Its ~20 Snakemake jobs spend most of their time starting Python and importing torch, one core each; started
    with the session, they overlap the unit tests instead of holding the suite for 1.5-2 minutes of their own.
    Yields ``(workdir, process, log path)``, or None when no selected test needs the run.
    """
    if not any("tiny_run" in item.fixturenames for item in request.session.items):
        yield None
        return
    wd = tmp_path_factory.mktemp("wf")
    # The Snakefile resolves workflow/ and the package sources relative to itself; configs are
    # copied so each test can change its own copy.
    copy_configs(wd)
    log_path = wd / "snakemake-run.log"
    # One torch thread here (and in the processes tests start) while the run's jobs hold the cores: idle
    # OpenMP threads spin-wait, and two of them fighting two Snakemake jobs for two cores cost more than a
    # second thread gains (the suite took 266 s with them, 200 s without).
    torch.set_num_threads(1)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(snakemake_cmd(wd, "--cores", "2", "--configfile", TINY_RUN_CONFIG), cwd=wd,
                                env=snakemake_env(), stdout=log, stderr=subprocess.STDOUT)
        mp = pytest.MonkeyPatch()
        mp.setenv("OMP_NUM_THREADS", "1")
        try:
            yield wd, proc, log_path
        finally:
            mp.undo()
            if proc.poll() is None:  # the session ended early (a failure with -x, Ctrl-C)
                proc.terminate()
                proc.wait(timeout=60)


@pytest.fixture(scope="session")
def tiny_run(tiny_run_started) -> Path:
    """The working folder of the finished tiny pipeline (``config/tests.yaml``); fails with Snakemake's log tail."""
    wd, proc, log_path = tiny_run_started
    rc = proc.wait(timeout=1800)
    if rc != 0:
        raise AssertionError(f"snakemake --configfile {TINY_RUN_CONFIG} failed (exit {rc}):\n"
                             f"{log_path.read_text()[-8000:]}")
    return wd

