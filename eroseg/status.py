"""Progress of a run's jobs and their ETA, read from the job logs (``eroseg status``).

Snakemake sends every job's output to its log (``results/<run>/logs/**/*.log``)
and shows only "9 of 16 steps done" on the console; on real data a training or
evaluation job runs for hours in between. Each job logs one line per unit of
work, which this module reads back:

- ``eroseg train``: ``epoch 12/64: loss ...`` after every epoch;
- ``eroseg evaluate``: ``setting 3/12 pgd: mIoU ...`` after every attack setting;
- ``eroseg tune``: ``candidate 2/6 {...}: mean val mIoU ...`` after every candidate;
- any other job (seconds long: synthesize, prepare, aggregate, figures): its last line.

A job is *finished* when its last unit is logged, *failed* when its last line
is an error, *running* when its log changed within ``stale_after`` seconds, and
*stopped* otherwise (killed, or waiting for a GPU slot); a job without units
whose log is older than that is *quiet* (usually done). The ETA is the mean
time per unit between the first and the last unit logged, times the units
left, less the time since the last unit.
"""

from __future__ import annotations

import dataclasses
import re
import time
from datetime import datetime
from pathlib import Path

#: ``2026-12-06 04:23:44,183 INFO eroseg.train: ...``: the format every eroseg log line has.
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ (\w+) [\w.]+: (.*)$")
#: One unit of work and the total: ``epoch 12/64:`` (train), ``setting 3/12 <name>:`` (evaluate).
_UNITS = (("epoch", re.compile(r"^epoch (\d+)/(\d+):")), ("setting", re.compile(r"^setting (\d+)/(\d+) ")),
          ("candidate", re.compile(r"^candidate (\d+)/(\d+) ")))


@dataclasses.dataclass
class JobProgress:
    """What one job log says: units done of the total, timing, and the state."""

    log: Path
    state: str  # running | finished | failed | stopped | quiet
    unit: str | None = None  # "epoch", "setting", or None (a job without units)
    done: int = 0
    total: int | None = None
    seconds_per_unit: float | None = None
    eta_s: float | None = None
    idle_s: float = 0.0  # seconds since the log last changed
    last_line: str = ""

    @property
    def name(self) -> str:
        """``train/pgd_at_seed0``: the log's path under ``logs/``, without ``.log``."""
        parts = self.log.with_suffix("").parts
        return "/".join(parts[parts.index("logs") + 1:]) if "logs" in parts else self.log.stem


def job_progress(log: Path, now: float | None = None, stale_after: float = 600.0) -> JobProgress:
    """Read one job log.

    Args:
        log: a job's log file.
        now: the time to measure idleness against (seconds since the epoch; default: now).
        stale_after: a log unchanged for longer than this (seconds) is a stopped job, not a running one.
    """
    now = time.time() if now is None else now
    idle = max(0.0, now - log.stat().st_mtime)
    lines = [line.rstrip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    units: list[tuple[float, int, int]] = []  # (time, done, total)
    unit_name, level, last = None, "", lines[-1] if lines else ""
    for line in lines:
        m = _STAMP.match(line)
        if not m:
            continue
        level, message = m.group(2), m.group(3)
        for name, pattern in _UNITS:
            u = pattern.match(message)
            if u:
                stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                unit_name = name
                units.append((stamp, int(u.group(1)), int(u.group(2))))
    job = JobProgress(log=log, state="stopped", unit=unit_name, idle_s=idle, last_line=last)
    if units:
        job.done, job.total = units[-1][1], units[-1][2]
        if len(units) >= 2 and units[-1][1] > units[0][1]:
            job.seconds_per_unit = (units[-1][0] - units[0][0]) / (units[-1][1] - units[0][1])
            job.eta_s = job.seconds_per_unit * (job.total - job.done)
    if level == "ERROR" or last.startswith("Traceback") or "Error" in last.split(":")[0]:
        job.state = "failed"
    elif job.total is not None and job.done >= job.total:
        job.state, job.eta_s = "finished", 0.0
    elif idle <= stale_after:
        job.state = "running"
    elif not units:
        job.state = "quiet"  # no units to count (prepare, aggregate, ...): likely done, cannot tell
    return job


def run_status(run_dir: str | Path, now: float | None = None, stale_after: float = 600.0) -> list[JobProgress]:
    """Every job log under ``<run_dir>/logs``, in path order.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``logs`` folder (not a run folder, or nothing ran yet).
    """
    logs = Path(run_dir) / "logs"
    if not logs.is_dir():
        runs = sorted(p.parent.name for p in Path(run_dir).parent.glob("*/logs"))
        raise FileNotFoundError(f"{logs}: no job logs; expected results/<run>/logs of a started run"
                                + (f" (runs with logs: {', '.join(runs)})" if runs else ""))
    return [job_progress(p, now, stale_after) for p in sorted(logs.rglob("*.log"))]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_job(job: JobProgress) -> str:
    """One line: state, job, units done, time per unit, ETA, and how long the log has been quiet."""
    parts = [f"{job.state:<8} {job.name}"]
    if job.unit:
        parts.append(f"{job.unit} {job.done}/{job.total}")
        if job.seconds_per_unit is not None:
            parts.append(f"{_duration(job.seconds_per_unit)}/{job.unit}")
        if job.state == "running" and job.eta_s is not None:
            parts.append(f"ETA {_duration(max(0.0, job.eta_s - job.idle_s))}")
    if job.state in ("running", "stopped"):
        parts.append(f"last line {_duration(job.idle_s)} ago")
    if (job.state == "failed" or not job.unit) and job.last_line:
        parts.append(job.last_line[-160:])
    return "  ".join(parts)


def format_status(run_dir: str | Path, jobs: list[JobProgress], show_finished: bool = False) -> str:
    """A summary line per run, then one line per job (finished ones only with ``show_finished``)."""
    counts = {s: sum(j.state == s for j in jobs) for s in ("running", "stopped", "failed", "finished", "quiet")}
    head = f"{run_dir}: {len(jobs)} job logs, " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    body = [f"  {format_job(j)}" for j in jobs if show_finished or j.state not in ("finished", "quiet")]
    return "\n".join([head, *body])


__all__ = ["JobProgress", "format_job", "format_status", "job_progress", "run_status"]
