"""Segmentation metrics: statistics first, reduction later.

A :class:`ConfusionMatrix` accumulates counts over a dataset and reduces them
to mIoU, pixel accuracy and per-class IoU at the end, which is the standard
dataset-level mIoU (not a mean of per-image mIoUs). :func:`per_image_stats`
keeps, for each image, the counts that the confusion matrix would receive
(true positives, predicted and labelled pixels per class), so that the worst
case over attacks can pick one attack per image and recompute the dataset
mIoU without attacking again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eroseg.conventions import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a ``[C, C]`` confusion matrix (rows: label, columns: prediction).

    Pixels whose label equals ``ignore_index`` are skipped. Predictions out of
    range raise, because they mean the model and the dataset disagree on the
    number of classes.

    Args:
        num_classes: number of classes ``C``.
        ignore_index: label value of void pixels.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add a batch. ``pred`` and ``label`` are integer tensors of the same shape."""
        self.matrix += confusion_matrix(pred, label, self.num_classes, self.ignore_index).cpu()

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self) -> dict:
        """Reduce to ``{"miou", "pixel_acc", "per_class_iou"}`` (IoU of absent classes is NaN)."""
        return scores_from_confusion(self.matrix)


def confusion_matrix(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Return the ``[C, C]`` int64 confusion matrix of one batch (on the inputs' device)."""
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
    valid = label != ignore_index
    lab = label[valid].long()
    prd = pred[valid].long()
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        raise ValueError(f"label values must be in [0, {num_classes}) or {ignore_index}; "
                         f"got {int(lab.min())}..{int(lab.max())}")
    if prd.numel() and (int(prd.min()) < 0 or int(prd.max()) >= num_classes):
        raise ValueError(f"predicted class out of range [0, {num_classes}): {int(prd.min())}..{int(prd.max())}")
    idx = lab * num_classes + prd
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_counts(tp: np.ndarray, pred_count: np.ndarray, label_count: np.ndarray) -> np.ndarray:
    """Per-class IoU ``tp / (pred + label - tp)``; NaN where the union is empty."""
    tp = np.asarray(tp, dtype=np.float64)
    union = np.asarray(pred_count, dtype=np.float64) + np.asarray(label_count, dtype=np.float64) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def scores_from_counts(tp, pred_count, label_count) -> dict:
    """mIoU (mean over classes with a non-empty union), pixel accuracy and per-class IoU."""
    iou = iou_from_counts(tp, pred_count, label_count)
    valid = float(np.sum(label_count))
    present = ~np.isnan(iou)
    return {
        "miou": float(np.mean(iou[present])) if present.any() else float("nan"),
        "pixel_acc": float(np.sum(tp)) / valid if valid > 0 else float("nan"),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
    }


def scores_from_confusion(matrix: torch.Tensor | np.ndarray) -> dict:
    """Reduce a ``[C, C]`` confusion matrix (rows label, columns prediction)."""
    m = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    return scores_from_counts(np.diag(m), m.sum(axis=0), m.sum(axis=1))


@dataclass
class PerImageStats:
    """Counts per image, enough to rebuild the confusion-matrix mIoU of any subset.

    Attributes:
        tp: ``[N, C]`` correctly predicted pixels per class.
        pred: ``[N, C]`` valid pixels predicted as each class.
        label: ``[N, C]`` valid pixels labelled as each class.
    """

    tp: np.ndarray
    pred: np.ndarray
    label: np.ndarray

    @property
    def pixel_acc(self) -> np.ndarray:
        """Per-image pixel accuracy (NaN for an image without valid pixels)."""
        valid = self.label.sum(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(valid > 0, self.tp.sum(axis=1) / np.where(valid > 0, valid, 1), np.nan)

    def scores(self) -> dict:
        return scores_from_counts(self.tp.sum(0), self.pred.sum(0), self.label.sum(0))

    def to_dict(self) -> dict:
        return {"tp": self.tp.tolist(), "pred": self.pred.tolist(), "label": self.label.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> PerImageStats:
        return cls(*(np.asarray(d[k], dtype=np.int64).reshape(len(d[k]), -1) for k in ("tp", "pred", "label")))

    @classmethod
    def concat(cls, parts: list[PerImageStats]) -> PerImageStats:
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("tp", "pred", "label")))


@torch.no_grad()
def per_image_stats(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> PerImageStats:
    """Per-image counts of a batch ``pred``/``label`` of shape ``[B, H, W]``.

    Vectorised over the batch with one ``bincount`` of ``(image, label, pred)``.
    """
    if pred.shape != label.shape or pred.dim() != 3:
        raise ValueError(f"expected pred and label of shape [B, H, W], "
                         f"got {tuple(pred.shape)} and {tuple(label.shape)}")
    b = pred.shape[0]
    valid = label != ignore_index
    img = torch.arange(b, device=pred.device).view(b, 1, 1).expand_as(pred)[valid]
    lab = label[valid].long()
    prd = pred[valid].long()
    c = num_classes
    if lab.numel() and int(lab.max()) >= c:
        raise ValueError(f"label values must be in [0, {c}) or {ignore_index}; got {int(lab.max())}")
    counts = torch.bincount((img * c + lab) * c + prd, minlength=b * c * c).reshape(b, c, c).cpu().numpy()
    tp = np.diagonal(counts, axis1=1, axis2=2).copy()
    return PerImageStats(tp=tp, pred=counts.sum(axis=1), label=counts.sum(axis=2))


#: Rules of :func:`worst_case_stats`.
WORST_CASE_RULES = ("miou", "pixel_acc")


def miou_of_counts(tp: np.ndarray, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """mIoU over the last axis (classes with an empty union left out), vectorised over leading axes."""
    union = pred + label - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        return np.nanmean(iou, axis=-1)


def worst_case_stats(
    stats: dict[str, PerImageStats], rule: str = "miou", max_sweeps: int = 50
) -> tuple[PerImageStats, list[str]]:
    """Worst case over attacks from stored per-image counts: which attack's result to keep for each image.

    ``rule="pixel_acc"`` is SEA's rule (Croce et al., "Towards Reliable
    Evaluation and Fast Training of Robust Semantic Segmentation Models", ECCV
    2024): per image, the attack with the lowest pixel accuracy (ties: the one
    listed first). Because the dataset mIoU is not a sum over images, that rule
    can give a *higher* mIoU than one of its own attacks.

    ``rule="miou"`` (default) minimises the dataset mIoU itself: it starts from
    whichever is lower of the pixel-accuracy choice and the best single attack
    (all images from the attack with the lowest mIoU), then runs coordinate
    descent over images: for each image in turn, switch it to the attack that
    lowers the dataset mIoU most (exactly, from the per-image intersections and
    unions), until a sweep changes nothing. Every move lowers the mIoU, so the
    result is never above any single attack's mIoU.

    Args:
        stats: attack name -> per-image stats over the same images in the same order.
        rule: ``"miou"`` or ``"pixel_acc"``.
        max_sweeps: bound on coordinate-descent sweeps (each sweep visits every image).

    Returns:
        The chosen per-image stats and the name of the attack chosen for each image.

    Raises:
        ValueError: no attacks, attacks over different numbers of images, or an unknown rule.
    """
    if not stats:
        raise ValueError("worst case needs at least one attack")
    if rule not in WORST_CASE_RULES:
        raise ValueError(f"worst case rule {rule!r}; expected one of {WORST_CASE_RULES}")
    names = list(stats)
    n = {k: v.tp.shape[0] for k, v in stats.items()}
    if len(set(n.values())) != 1:
        raise ValueError(f"attacks cover different numbers of images: {n}")
    tp = np.stack([stats[k].tp for k in names]).astype(np.float64)  # [A, N, C]
    pred = np.stack([stats[k].pred for k in names]).astype(np.float64)
    label = stats[names[0]].label.astype(np.float64)  # [N, C]: the labels do not depend on the attack
    acc = np.stack([np.nan_to_num(stats[k].pixel_acc, nan=np.inf) for k in names])  # [A, N]
    rows = np.arange(tp.shape[1])
    choice = np.argmin(acc, axis=0)
    if rule == "miou":
        choice = _descend(tp, pred, label, choice, max_sweeps)
    picked = PerImageStats(tp[choice, rows].astype(np.int64), pred[choice, rows].astype(np.int64),
                           label.astype(np.int64))
    return picked, [names[i] for i in choice]


def _descend(tp: np.ndarray, pred: np.ndarray, label: np.ndarray, start: np.ndarray, max_sweeps: int) -> np.ndarray:
    """Coordinate descent on the dataset mIoU over per-image attack choices (see :func:`worst_case_stats`)."""
    rows = np.arange(tp.shape[1])
    label_tot = label.sum(0)
    single = miou_of_counts(tp.sum(1), pred.sum(1), label_tot)  # [A]: each attack alone
    choice = start.copy()
    cur = miou_of_counts(tp[choice, rows].sum(0), pred[choice, rows].sum(0), label_tot)
    best_single = int(np.nanargmin(single))
    if single[best_single] < cur:
        choice[:] = best_single
        cur = single[best_single]
    tp_tot = tp[choice, rows].sum(0)
    pred_tot = pred[choice, rows].sum(0)
    for _ in range(max_sweeps):
        moved = False
        for i in rows:
            a = choice[i]
            # mIoU with image i switched to each attack: [A]
            cand = miou_of_counts(tp_tot - tp[a, i] + tp[:, i], pred_tot - pred[a, i] + pred[:, i], label_tot)
            b = int(np.nanargmin(cand))
            if cand[b] < cur - 1e-12:
                tp_tot += tp[b, i] - tp[a, i]
                pred_tot += pred[b, i] - pred[a, i]
                choice[i], cur, moved = b, cand[b], True
        if not moved:
            break
    return choice
