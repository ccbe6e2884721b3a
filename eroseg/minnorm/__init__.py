"""Minimal-norm attacks (through adversarial-library) and their evaluation records and tables.

A minimal-norm attack finds, per image, the smallest perturbation that fools a
share ``adv_threshold`` of its valid pixels (Rony et al., "Proximal Splitting
Adversarial Attacks for Semantic Segmentation", CVPR 2023). One run gives the
whole robustness curve: an image is robust at ``eps`` when its minimal norm
exceeds ``eps``, and the perturbation scaled down to ``eps`` is one more
candidate for the worst case there.

- :mod:`eroseg.minnorm.catalog`: the wrapped attacks and the check of their arguments (no torch).
- :mod:`eroseg.minnorm.attacks`: :func:`run_min_norm` wraps adv-lib's
  ``alma_prox``, ``pdpgd``, ``dag`` and ``pdgd`` behind one signature (``asma`` is left out)
  and checks every result with a forward pass of its own.
- :mod:`eroseg.minnorm.records`: :func:`evaluate_min_norm`, the JSON record of
  one run (per image norms, per eps of a grid the per-image counts).
- :mod:`eroseg.minnorm.tables`: :func:`min_norm_table` and
  :func:`robustness_curve_figure`.

adv-lib is an optional dependency (``pip install 'eroseg[minnorm]'``); it is
imported on the first attack, so this package imports without it.
"""

import importlib

#: Public name -> the submodule that defines it; imported on first use (:func:`__getattr__`), so that
#: ``eroseg.minnorm.catalog`` (read by the workflow while it plans) imports without torch.
_EXPORTS = {
    "MIN_NORM_ATTACKS": "catalog", "attack_arguments": "catalog",
    "MinNormResult": "attacks", "run_min_norm": "attacks", "verify_min_norm": "attacks",
    "RECORD_KIND": "records", "evaluate_min_norm": "records", "scale_to_eps": "records", "stats_at_eps": "records",
    "min_norm_frame": "tables", "min_norm_table": "tables", "robustness_curve_figure": "tables",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'eroseg.minnorm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"eroseg.minnorm.{_EXPORTS[name]}"), name)
