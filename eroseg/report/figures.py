"""The report's figures, each one registered function (:func:`eroseg.report.registry.register_figure`).

Each builder takes the :class:`FigureInputs` and writes ``<name>.png`` and ``<name>.svg`` (drawn with
:mod:`eroseg.figures`, imported when a figure is drawn so that the workflow can read this registry without
matplotlib). Figures never load a model: everything they show was written by the evaluation and training jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from eroseg.io import read_json
from eroseg.numbers import eps_in_255, eps_label
from eroseg.report.registry import register_figure
from eroseg.report.spec import PerClass, ReportSpec, Sweep


@dataclass
class FigureInputs:
    """What a figure builder reads: the spec, the input files, the evaluations as one frame, the classes.

    ``logs``: training log CSVs at ``.../<method>/seed<k>/log.csv``; ``samples``: sample ``.npz`` files (the
    first is drawn); ``steps``: an ``.npz`` with EroSeg's per-step masks; ``frame``: one row per evaluation
    (:meth:`eroseg.report.evals.Evals.frame`).
    """

    spec: ReportSpec
    out_dir: Path
    evals: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    steps: str | None = None
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    classes: list[str] = field(default_factory=list)
    palette: list = field(default_factory=list)

    @property
    def sweep(self) -> Sweep:
        return self.spec.sweep or Sweep()

    def sweep_attacks(self) -> list[str]:
        """The sweep's attacks; every evaluated setting when the spec names none."""
        return list(self.sweep.attacks) or sorted(set(self.frame.get("setting", [])) - {"clean"})

    def headline_eps_255(self) -> float:
        return eps_in_255(self.spec.headline.eps)


def _sweep(inputs: FigureInputs, x: str) -> list[Path]:
    from eroseg import figures as plots

    return plots.sweep_figure(inputs.frame, x, inputs.sweep.method, inputs.sweep_attacks(), inputs.headline_eps_255(),
                              inputs.spec.headline.steps, inputs.out_dir, inputs.spec.dpi)


@register_figure("robust_vs_steps", title="mIoU against attack steps on the sweep's model", caption="fig_sweeps")
def robust_vs_steps(inputs: FigureInputs) -> list[Path]:
    return _sweep(inputs, "steps")


@register_figure("robust_vs_eps", title="mIoU against eps on the sweep's model", caption="fig_sweeps")
def robust_vs_eps(inputs: FigureInputs) -> list[Path]:
    return _sweep(inputs, "eps_255")


def _per_class_records(inputs: FigureInputs, method: str, attacks: list[str], seed: int | None) -> list[dict]:
    """The clean and headline-budget evaluations of ``method`` (and ``seed``), one of each setting, in order."""
    chosen = []
    for p in inputs.evals:
        d = read_json(p)
        params = d.get("attack_params") or {}
        if d.get("method") != method or d.get("seed") != (d.get("seed") if seed is None else seed):
            continue
        if d["setting"] == "clean" or (
            d["setting"] in attacks
            and eps_in_255(params.get("eps", 0)) == inputs.headline_eps_255()
            and int(params.get("steps", 0)) == inputs.spec.steps_at_headline(d["setting"])
        ):
            if all(c["setting"] != d["setting"] for c in chosen):
                chosen.append(d)
    order = ["clean", *attacks]
    chosen.sort(key=lambda d: order.index(d["setting"]) if d["setting"] in order else len(order))
    return chosen


@register_figure("per_class_iou", title="per-class IoU clean and under each attack", caption="fig_per_class")
def per_class_iou(inputs: FigureInputs) -> list[Path]:
    from eroseg import figures as plots

    per_class = inputs.spec.per_class or PerClass()
    method = per_class.method or inputs.sweep.method
    chosen = _per_class_records(inputs, method, list(per_class.attacks) or inputs.sweep_attacks(), per_class.seed)
    if not chosen:
        return plots.placeholder(inputs.out_dir, "per_class_iou", f"no evaluation of method {method}", inputs.spec.dpi)
    head = inputs.spec.headline
    return plots.plot_per_class(chosen, inputs.classes, inputs.out_dir, f"{method}: per-class IoU, eps "
                                f"{inputs.headline_eps_255():g}/255, {head.steps} steps", inputs.spec.dpi)


@register_figure("training_curves", title="training loss and val mIoU per epoch", caption="fig_training")
def training_curves(inputs: FigureInputs) -> list[Path]:
    """From the training logs, each at ``.../<method>/seed<k>/log.csv``."""
    from eroseg import figures as plots

    frames = {}
    for p in inputs.logs:
        path = Path(p)
        frames[f"{path.parent.parent.name}/{path.parent.name}"] = pd.read_csv(path)
    if not frames:
        return plots.placeholder(inputs.out_dir, "training_curves", "no logs", inputs.spec.dpi)
    return plots.plot_training(frames, inputs.out_dir, inputs.spec.dpi, list(inputs.spec.methods))


@register_figure("qualitative", title="images, perturbations and predictions", caption="fig_qualitative")
def qualitative(inputs: FigureInputs) -> list[Path]:
    """The first sample file's images, perturbations and predictions."""
    from eroseg import figures as plots

    dpi = inputs.spec.dpi
    if not inputs.samples:
        return plots.placeholder(inputs.out_dir, "qualitative", "no samples", dpi)
    with np.load(inputs.samples[0]) as z:
        arrays = {k: z[k] for k in z.files}
    if "image" not in arrays:
        return plots.placeholder(inputs.out_dir, "qualitative", "sample file holds no images", dpi)
    drawn = inputs.spec.samples
    title = inputs.spec.qualitative_title or (
        f"{drawn.method} under {drawn.attack}, eps {eps_label(drawn.eps)}, {int(drawn.steps)} steps"
        if drawn else Path(inputs.samples[0]).stem)
    return plots.plot_qualitative(arrays, inputs.classes, inputs.palette, inputs.out_dir, title, dpi)


@register_figure("erosion", title="EroSeg's fooled region and attacked mask over its steps", caption="fig_erosion")
def erosion(inputs: FigureInputs) -> list[Path]:
    """EroSeg's per-step masks, from an ``.npz`` with ``step_fooled`` (and ``step_attacked``)."""
    from eroseg import figures as plots

    dpi = inputs.spec.dpi
    if not inputs.steps:
        return plots.placeholder(inputs.out_dir, "erosion", "no EroSeg run recorded", dpi)
    with np.load(inputs.steps) as z:
        step_masks = {k: z[k] for k in z.files if k.startswith("step_")}
    if "step_fooled" not in step_masks:
        return plots.placeholder(inputs.out_dir, "erosion", "no per-step masks recorded", dpi)
    drawn = inputs.spec.samples
    title = inputs.spec.erosion_title or (
        f"{drawn.attack} on {drawn.method}: erosion over iterations (first image)"
        if drawn else "EroSeg: erosion over iterations")
    return plots.plot_erosion(step_masks, inputs.out_dir, title, dpi)
