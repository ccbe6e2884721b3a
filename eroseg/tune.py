"""Tuning of an attack family's free settings on the validation split (never on the reported split).

Every family (EroSeg's switches, the step size of PGD, SegPGD and CosPGD) is
tuned by the same protocol: each candidate of a grid is run on the same
models, images, eps and steps; the candidate with the lowest mean mIoU over
the models wins (ties: the first in grid order). The chosen parameters are
kept as written in the grid (``"eps/4"`` stays relative to eps), so they
apply at every eps of the evaluation.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from eroseg.io import read_json

log = logging.getLogger(__name__)

#: Format of the tuning JSON.
TUNING_VERSION = 1


def grid_candidates(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Cartesian product of ``grid`` (parameter -> values) in grid order.

    Raises:
        ValueError: the grid is empty or a parameter has no values.
    """
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"a tuning grid must map parameter names to lists of values, got {grid!r}")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ValueError(f"tuning grid key {k!r}: expected a non-empty list of values, got {v!r}")
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def tune(
    models: dict[str, Any],
    run: Callable[[Any, dict], float],
    base: dict[str, Any],
    grid: dict[str, list],
) -> dict:
    """Run every candidate on every model; choose the lowest mean mIoU.

    Args:
        models: label -> model (each is attacked with every candidate).
        run: ``run(model, params) -> mIoU`` of the attack with ``params`` (base
            parameters overridden by the candidate's).
        base: parameters every candidate shares (eps, steps, ...).
        grid: parameter -> candidate values.

    Returns:
        ``{"chosen": params, "candidates": [{"params", "miou": {label: m}, "mean"}]}``.
    """
    rows = []
    candidates = grid_candidates(grid)
    for k, candidate in enumerate(candidates, 1):
        mious = {label: float(run(model, {**base, **candidate})) for label, model in models.items()}
        mean = sum(mious.values()) / len(mious)
        rows.append({"params": candidate, "miou": mious, "mean": mean})
        # "candidate k/N": the unit `eroseg status` counts for its progress and ETA
        log.info("candidate %d/%d %s: mean val mIoU %.4f", k, len(candidates), candidate, mean)
    best = min(range(len(rows)), key=lambda i: (rows[i]["mean"], i))
    return {"chosen": rows[best]["params"], "candidates": rows}


def tuned_params(params: dict, path: str | os.PathLike | None) -> dict:
    """``params`` with the parameters that the tuning file ``path`` chose laid over them (``path`` None: unchanged).

    Raises:
        ValueError: ``path`` is not a tuning result of format :data:`TUNING_VERSION` with a ``chosen`` object
            (names the file).
        OSError: the file cannot be read.
    """
    if not path:
        return params
    result = read_json(path)
    if not isinstance(result, dict) or result.get("version") != TUNING_VERSION or not isinstance(
            result.get("chosen"), dict):
        raise ValueError(f"{path}: not a tuning result (format {TUNING_VERSION} with a 'chosen' object); rerun the "
                         "tuning stage")
    return {**params, **result["chosen"]}


def tune_attack(checkpoints: Sequence[str | os.PathLike], dataset, *, attack: str, base: dict, grid: dict,
                batch_size: int, device, seed: int, amp: bool, max_images: int | None,
                wrap: Callable[[Any], Any] | None = None) -> dict:
    """:func:`tune` of attack ``attack`` on the models of ``checkpoints``, each candidate scored by its val mIoU.

    Args:
        checkpoints: model files every candidate is run on.
        dataset: the validation split (as :func:`eroseg.evaluate.evaluate` takes it).
        attack: registered attack name.
        base, grid: as :func:`tune` (numbers may be text such as ``"eps/4"``).
        batch_size, device, seed, amp, max_images: as :func:`eroseg.evaluate.evaluate`.
        wrap: applied to each model after loading (e.g. sliding-window inference), or None.

    Returns:
        :func:`tune`'s result.
    """
    from eroseg.attacks import build_attack
    from eroseg.evaluate import evaluate
    from eroseg.models import load_model

    models, num_classes = {}, None
    for path in checkpoints:
        model, meta = load_model(path, map_location=device)
        models[str(path)] = wrap(model) if wrap is not None else model
        num_classes = int(meta["num_classes"])

    def val_miou(model, params: dict) -> float:
        result = evaluate(model, dataset, num_classes, attack=build_attack(attack, {**params, "amp": amp}),
                          batch_size=batch_size, device=device, seed=seed, amp=amp, max_images=max_images)
        return result["metrics"]["miou"]

    return tune(models, val_miou, base, grid)
