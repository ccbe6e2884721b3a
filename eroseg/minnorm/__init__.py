"""Minimal-norm attacks (through adversarial-library) and their evaluation records and tables.

A minimal-norm attack finds, per image, the smallest perturbation that fools a
share ``adv_threshold`` of its valid pixels (Rony et al., "Proximal Splitting
Adversarial Attacks for Semantic Segmentation", CVPR 2023). One run gives the
whole robustness curve: an image is robust at ``eps`` when its minimal norm
exceeds ``eps``, and the perturbation scaled down to ``eps`` is one more
candidate for the worst case there.

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

from eroseg.minnorm.attacks import MIN_NORM_ATTACKS, MinNormResult, run_min_norm, verify_min_norm
from eroseg.minnorm.records import RECORD_KIND, evaluate_min_norm, scale_to_eps, stats_at_eps
from eroseg.minnorm.tables import min_norm_frame, min_norm_table, robustness_curve_figure

__all__ = [
    "MIN_NORM_ATTACKS", "MinNormResult", "run_min_norm", "verify_min_norm", "RECORD_KIND", "evaluate_min_norm",
    "scale_to_eps", "stats_at_eps", "min_norm_frame", "min_norm_table", "robustness_curve_figure",
]
