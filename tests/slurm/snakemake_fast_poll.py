"""Run Snakemake with the SLURM plugin's status checks at most EROSEG_SLURM_MAX_POLL seconds apart (default 1).

Test-cluster use only: ``python tests/slurm/snakemake_fast_poll.py <snakemake arguments>``.

snakemake-executor-plugin-slurm waits 10 s longer after every status check that
finds no finished job (up to 180 s), which suits a busy production cluster but
made the SLURM test tier spend most of its minutes asleep while jobs of a few
seconds had long finished. Here the interval is capped; everything else (sbatch,
squeue, the job step inside each job) is the plugin's own code path.
"""

import os
import sys


def _cap_status_interval(cap: float) -> None:
    try:
        from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
    except ImportError:  # another interface version: run unchanged (slower, same result)
        return
    prop = getattr(RemoteExecutor, "next_seconds_between_status_checks", None)
    if not isinstance(prop, property) or prop.fget is None or prop.fset is None:
        return
    RemoteExecutor.next_seconds_between_status_checks = property(
        lambda self: min(prop.fget(self), cap), prop.fset
    )


if __name__ == "__main__":
    _cap_status_interval(float(os.environ.get("EROSEG_SLURM_MAX_POLL", "1")))
    from snakemake.cli import main

    sys.argv[0] = "snakemake"
    sys.exit(main())
