"""Fixed cost of starting an eroseg process: ``eroseg --help`` and an evaluation job up to its first batch.

Every Snakemake job is a fresh ``eroseg`` process, so on the embedded default
(jobs of a few seconds) the start-up is a large share of the run. Printed side
by side, each the median over ``--repeat`` fresh processes:

* ``python -c pass``: the interpreter alone (the floor);
* ``python -m eroseg --help``: the CLI (goal: under 1 s);
* ``eroseg evaluate`` up to its first batch: from process start (the parent's
  clock just before the child is spawned) to the moment the first batch of
  images is ready, i.e. imports (torch, segmentation_models_pytorch/timm),
  device selection, checkpoint and model, dataset scan and the first decode
  (goal: under 3 s). The child then exits; the evaluation itself is not timed.

With ``--importtime`` the slowest imports of each command are listed (from
``python -X importtime``). The checkpoint is a freshly initialised model of
the tests config (random weights: loading costs the same) on a small
synthetic dataset written to a temporary folder.

Examples::

    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --repeat 5 --importtime
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs `eroseg evaluate` in this process, but stops at the first batch and prints the time it was ready.
FIRST_BATCH = """
import os, sys, time
import eroseg.evaluate as ev
batches = ev.size_bucketed_batches
def first_batch(*args, **kwargs):
    for batch in batches(*args, **kwargs):
        print(f"FIRST_BATCH {time.time():.6f}", flush=True)
        os._exit(0)
ev.size_bucketed_batches = first_batch
from eroseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _wall(cmd: list[str]) -> float:
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True, env=_env())
    return time.time() - t0


def _first_batch(cmd: list[str]) -> float:
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    m = re.search(r"FIRST_BATCH (\d+\.\d+)", res.stdout)
    if not m:
        raise RuntimeError(f"the evaluation did not reach its first batch:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return float(m.group(1)) - t0


def _importtime(cmd: list[str], top: int) -> list[tuple[float, str]]:
    res = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, env=_env())
    rows = []
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and not m.group(3):  # top-level imports only: their cumulative time is what the command pays
            rows.append((int(m.group(2)) / 1e6, m.group(4)))
    return sorted(rows, reverse=True)[:top]


def _fixture(tmp: Path) -> Path:
    """A small synthetic dataset and a checkpoint of the tests config's model."""
    sys.path.insert(0, str(ROOT))
    from eroseg.data import generate_synthetic
    from eroseg.models import model_from_config, save_checkpoint

    generate_synthetic(tmp / "data", n_train=2, n_val=2, n_test=8, height=32, width=32, seed=0)
    model_cfg = {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None,
                 "kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}}
    from eroseg.data import dataset_info

    n = dataset_info("synthetic").num_classes
    save_checkpoint(tmp / "model.pt", model_from_config(model_cfg, n), {"model": model_cfg, "num_classes": n})
    return tmp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="fresh processes per measurement (median reported)")
    p.add_argument("--importtime", action="store_true", help="also list the slowest top-level imports")
    p.add_argument("--top", type=int, default=8, help="imports listed with --importtime")
    args = p.parse_args(argv)
    py = sys.executable
    with tempfile.TemporaryDirectory() as d:
        tmp = _fixture(Path(d))
        evaluate = [py, "-c", FIRST_BATCH, "evaluate", "--checkpoint", str(tmp / "model.pt"), "--dataset",
                    "synthetic", "--root", str(tmp / "data"), "--split", "test", "--batch-size", "4",
                    "--seed", "0", "--threads", "1", "--out", str(tmp / "clean.json")]
        commands = {
            "python -c pass": ([py, "-c", "pass"], _wall),
            "eroseg --help": ([py, "-m", "eroseg", "--help"], _wall),
            "eroseg evaluate, start to first batch": (evaluate, _first_batch),
        }
        _wall([py, "-m", "eroseg", "--help"])  # warm the file cache once
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.repeat):  # interleaved, so a burst of load on the machine hits every command
            for name, (cmd, timer) in commands.items():
                times[name].append(timer(cmd))
        print(f"{'command':<40} {'median s':>9} {'min s':>7} {'max s':>7}  (n={args.repeat}, {py})")
        for name, ts in times.items():
            print(f"{name:<40} {statistics.median(ts):9.2f} {min(ts):7.2f} {max(ts):7.2f}")
        print(f"goals: eroseg --help < 1 s, evaluation fixed cost < 3 s; load average now "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if args.importtime:
            for name in ("eroseg --help", "eroseg evaluate, start to first batch"):
                cmd = commands[name][0]
                print(f"\nslowest top-level imports of {name} (cumulative s):")
                for s, mod in _importtime(cmd, args.top):
                    print(f"  {s:7.2f}  {mod}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
