"""Robustness by object size: ground-truth connected components, their scores clean and under attack, terciles.

mIoU weighs every pixel of a class alike, so a model that loses every small
object of a class can keep a high IoU there. Halmosi et al. ("Evaluating the
Adversarial Robustness of Semantic Segmentation: Trying Harder Pays Off", ECCV
2024) report robustness as a function of object size and find small objects
easier to fool. This module measures the same question with its own, stated
definitions (the statistics of the paper are not reproduced one to one):

- **Object**: a connected component (4-connectivity by default) of the pixels
  of one class in the ground-truth label map; void pixels (``ignore_index``)
  belong to none. Halmosi et al. use the datasets' objects as well; the
  synthetic data and the class-level label maps of VOC, Cityscapes (``gtFine``
  train ids) and ADE20K carry no instance ids here, so touching objects of
  one class form one component.
- **Area**: pixels of the component. **Size terciles**: the components of the
  evaluated split are split at the 1/3 and 2/3 quantiles of their areas
  (``small``: area <= q1/3, ``medium``: <= q2/3, ``large``: above), so each
  tercile holds about a third of the objects; fixed pixel bins, as in the
  paper, would not carry over between 32x32 synthetic images and 2048x1024
  Cityscapes images.
- **Recall** of a component: share of its pixels predicted as its class.
- **IoU** of a component: its correctly predicted pixels over the union of the
  component and every predicted segment of its class (a connected component
  of the prediction, valid pixels only) that overlaps it. A prediction that
  spills beyond the object lowers the IoU; one that misses it gives 0.
- **Flipped share**: pixels of the component that are predicted correctly on
  the clean image and wrongly under attack, over its area (pixels first wrong
  and then right count nowhere).

Per image, :func:`component_summary` returns lists (one entry per component)
that an evaluation record can store as JSON; :func:`component_frame`,
:func:`size_table` and :func:`size_figure` turn stored summaries into the
``size`` table and figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eroseg.metrics import IGNORE_INDEX

#: Names of the size terciles, smallest first.
TERCILES = ("small", "medium", "large")

#: Per-component fields of :func:`component_summary`.
SUMMARY_FIELDS = ("class", "area", "correct_clean", "correct_adv", "flipped", "union_clean", "union_adv")


def _row_runs(regions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Runs of equal values along each row of ``regions`` [H, W], in row-major order.

    Returns:
        ``(rows, starts, ends, values)``: per run its row, first column, column after its last, and value; the
        runs of a row cover it from column 0 to W.
    """
    h, w = regions.shape
    change = np.ones((h, w), dtype=bool)
    change[:, 1:] = regions[:, 1:] != regions[:, :-1]
    rows, starts = np.nonzero(change)
    ends = np.append(starts[1:], w)
    ends[np.append(rows[1:] != rows[:-1], True)] = w
    return rows, starts, ends, regions[rows, starts]


def _run_pairs(rows, starts, ends, values, width: int, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of runs in consecutive rows that touch and hold the same value >= 0.

    Two runs of rows r and r + 1 share a column exactly when one of them starts inside the other, so looking up,
    at every run start, the run of the other row that holds that column finds every overlapping pair. With
    8-connectivity, runs that touch only at a corner are found from the column before each upper run and the
    column after it, looked up in the row below.
    """
    keys = rows * (width + 1) + starts  # sorted: row-major

    def run_at(row, column):
        return np.searchsorted(keys, row * (width + 1) + column, side="right") - 1

    upper = rows < rows.max()
    lower = rows > 0
    pairs = [(np.flatnonzero(upper), run_at(rows[upper] + 1, starts[upper])),  # lower runs holding an upper start
             (run_at(rows[lower] - 1, starts[lower]), np.flatnonzero(lower))]  # upper runs holding a lower start
    if connectivity == 8:
        before = upper & (starts > 0)
        after = upper & (ends < width)
        pairs += [(np.flatnonzero(before), run_at(rows[before] + 1, starts[before] - 1)),
                  (np.flatnonzero(after), run_at(rows[after] + 1, ends[after]))]
    first = np.concatenate([a for a, _ in pairs])
    second = np.concatenate([b for _, b in pairs])
    joined = (values[first] == values[second]) & (values[first] >= 0)
    return first[joined], second[joined]


def _roots(n: int, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Union-find over ``n`` nodes joined by the edges ``sources``-``targets``: each node's root, the smallest node
    of its set (hooking onto the smaller root, then pointer jumping, vectorised over all edges at once)."""
    parent = np.arange(n)
    while True:
        root_s, root_t = parent[sources], parent[targets]
        differ = root_s != root_t
        if not differ.any():
            return parent
        np.minimum.at(parent, np.maximum(root_s, root_t)[differ], np.minimum(root_s, root_t)[differ])
        while True:  # pointer jumping until every node points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def connected_components(regions: np.ndarray, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """Connected components of each region of an integer map (pixels < 0 belong to none).

    Works on the runs of equal values along the rows (a segmentation map of 1024x2048 pixels has a few
    tens of thousands): runs of consecutive rows that touch are joined by a vectorised union-find
    (numpy only), and the component ids are painted back run by run.

    Args:
        regions: ``[H, W]`` integer map; neighbours with the same value >= 0 are joined.
        connectivity: 4 (edges) or 8 (edges and corners).

    Returns:
        ``(components, n)``: ``[H, W]`` int64 map with ids ``1..n`` in order of first pixel (0: no region).
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    regions = np.asarray(regions)
    if regions.ndim != 2:
        raise ValueError(f"expected a [H, W] map, got shape {regions.shape}")
    if regions.size == 0:
        return np.zeros(regions.shape, dtype=np.int64), 0
    rows, starts, ends, values = _row_runs(regions)
    parent = _roots(len(rows), *_run_pairs(rows, starts, ends, values, regions.shape[1], connectivity))
    inside = values >= 0
    _, ids = np.unique(parent[inside], return_inverse=True)  # roots are first runs: ids in order of first pixel
    run_ids = np.zeros(len(rows), dtype=np.int64)
    run_ids[inside] = ids.ravel() + 1
    components = np.repeat(run_ids, ends - starts).reshape(regions.shape)
    return components, int(ids.max() + 1) if ids.size else 0


def _ids(label: np.ndarray, ignore_index: int) -> np.ndarray:
    return np.where(label == ignore_index, -1, label).astype(np.int64)


def _union_with_segments(components: np.ndarray, n: int, label: np.ndarray, pred: np.ndarray, valid: np.ndarray,
                         connectivity: int) -> np.ndarray:
    """Per component, the area of its union with the predicted segments of its class that overlap it."""
    segments, m = connected_components(np.where(valid, pred, -1), connectivity)
    segment_area = np.bincount(segments.ravel(), minlength=m + 1)
    correct = valid & (pred == label)
    pairs = np.unique(components[correct].astype(np.int64) * (m + 1) + segments[correct])
    touched = np.bincount(pairs // (m + 1), weights=segment_area[pairs % (m + 1)], minlength=n + 1)
    area = np.bincount(components.ravel(), minlength=n + 1)
    hits = np.bincount(components[correct], minlength=n + 1)
    return (area + touched - hits)[1:]


class LabelObjects:
    """The ground-truth components of one label map, found once and scored against any number of predictions.

    Args:
        label: ``[H, W]`` ground truth (``ignore_index`` for void).
        ignore_index: void label.
        connectivity: 4 or 8.

    Attributes:
        components: ``[H, W]`` component ids ``1..n`` (0: void).
        n: number of components.
        classes, areas: per component, its class and its pixel count.
    """

    def __init__(self, label, *, ignore_index: int = IGNORE_INDEX, connectivity: int = 4):
        self.label = np.asarray(label)
        self.ignore_index, self.connectivity = ignore_index, connectivity
        self.valid = self.label != ignore_index
        self.components, self.n = connected_components(_ids(self.label, ignore_index), connectivity)
        self._flat = self.components.ravel()
        classes = np.zeros(self.n + 1, dtype=np.int64)
        classes[self._flat] = self.label.ravel()  # every pixel of a component holds its class: any write will do
        self.classes = classes[1:]
        self.areas = self._count(self._flat > 0)

    def _count(self, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self._flat[mask], minlength=self.n + 1)[1:]

    def _right(self, pred) -> np.ndarray:
        pred = np.asarray(pred)
        if pred.shape != self.label.shape:
            raise ValueError(f"prediction {pred.shape} and label {self.label.shape} must have one shape")
        return (self.valid & (pred == self.label)).ravel()

    def scored(self, pred) -> dict[str, np.ndarray]:
        """Per component: ``correct`` (pixels predicted as its class) and ``union`` (the IoU's denominator)."""
        return {"correct": self._count(self._right(pred)),
                "union": _union_with_segments(self.components, self.n, self.label, np.asarray(pred), self.valid,
                                              self.connectivity)}

    def clean_summary(self, pred_clean) -> dict[str, list[int]]:
        """JSON-able lists per component: ``class``, ``area``, ``correct``, ``union`` of the clean prediction."""
        return _ints({"class": self.classes, "area": self.areas, **self.scored(pred_clean)})

    def attacked_summary(self, pred_clean, pred_adv) -> dict[str, list[int]]:
        """JSON-able lists per component: ``correct``, ``union`` under attack and ``flipped`` (right on the clean
        image, wrong under attack)."""
        flipped = self._count(self._right(pred_clean) & ~self._right(pred_adv))
        return _ints({**self.scored(pred_adv), "flipped": flipped})


class ObjectSummaries:
    """Per-image summaries of the ground-truth components, gathered batch by batch: the clean prediction's
    (:meth:`LabelObjects.clean_summary`), the result's and each named component's (SEA's losses, restarts;
    :meth:`LabelObjects.attacked_summary`). The ``objects`` field of an evaluation record."""

    def __init__(self, connectivity: int, ignore_index: int = IGNORE_INDEX):
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
        self.connectivity, self.ignore_index = connectivity, ignore_index
        self.clean: list[dict] = []
        self.adv: list[dict] = []
        self.components: dict[str, list[dict]] = {}

    def add(self, labels, pred_clean, pred_adv, component_predictions=None) -> None:
        """One batch: ``[B, H, W]`` labels and predictions (tensors or arrays), components by name."""
        labels, pred_clean, pred_adv = (_numpy(t) for t in (labels, pred_clean, pred_adv))
        parts = {name: _numpy(pred) for name, pred in (component_predictions or {}).items()}
        for j, label in enumerate(labels):
            objects = LabelObjects(label, ignore_index=self.ignore_index, connectivity=self.connectivity)
            self.clean.append(objects.clean_summary(pred_clean[j]))
            self.adv.append(objects.attacked_summary(pred_clean[j], pred_adv[j]))
            for name, pred in parts.items():
                self.components.setdefault(name, []).append(objects.attacked_summary(pred_clean[j], pred[j]))

    def in_order(self, order) -> dict:
        """``connectivity`` and the summaries in dataset order (``order``: rows as gathered, e.g.
        :func:`eroseg.data.batching.dataset_order`)."""
        return {"connectivity": self.connectivity, "clean": [self.clean[i] for i in order],
                "adv": [self.adv[i] for i in order],
                "components": {name: [rows[i] for i in order] for name, rows in self.components.items()}}


def _numpy(values) -> np.ndarray:
    return values.cpu().numpy() if hasattr(values, "cpu") else np.asarray(values)


def _ints(columns: dict) -> dict[str, list[int]]:
    return {key: [int(v) for v in values] for key, values in columns.items()}


def join_summaries(clean: dict, attacked: dict) -> dict[str, list[int]]:
    """One image's :meth:`LabelObjects.clean_summary` and :meth:`~LabelObjects.attacked_summary` as the fields of
    :data:`SUMMARY_FIELDS`."""
    if len(clean["area"]) != len(attacked["correct"]):
        raise ValueError(f"clean summary of {len(clean['area'])} components and attacked summary of "
                         f"{len(attacked['correct'])} do not describe one image")
    return {"class": clean["class"], "area": clean["area"], "correct_clean": clean["correct"],
            "correct_adv": attacked["correct"], "flipped": attacked["flipped"], "union_clean": clean["union"],
            "union_adv": attacked["union"]}


def component_summary(label: np.ndarray, pred_clean: np.ndarray, pred_adv: np.ndarray, *,
                      ignore_index: int = IGNORE_INDEX, connectivity: int = 4) -> dict[str, list[int]]:
    """Per ground-truth component of one image: class, area and the counts behind its scores.

    Args:
        label: ``[H, W]`` ground truth (``ignore_index`` for void).
        pred_clean: ``[H, W]`` prediction on the clean image.
        pred_adv: ``[H, W]`` prediction under attack.
        ignore_index: void label.
        connectivity: 4 or 8.

    Returns:
        JSON-able dict of equal-length int lists (:data:`SUMMARY_FIELDS`): ``class``, ``area``,
        ``correct_clean`` / ``correct_adv`` (pixels predicted as the class), ``flipped`` (correct clean, wrong
        under attack), ``union_clean`` / ``union_adv`` (the IoU's denominator, see the module docstring).
        Recall = correct / area, IoU = correct / union, flipped share = flipped / area.
    """
    label, pred_clean, pred_adv = (np.asarray(a) for a in (label, pred_clean, pred_adv))
    if not label.shape == pred_clean.shape == pred_adv.shape:
        raise ValueError(f"label {label.shape}, clean prediction {pred_clean.shape} and adversarial prediction "
                         f"{pred_adv.shape} must have one shape")
    objects = LabelObjects(label, ignore_index=ignore_index, connectivity=connectivity)
    return join_summaries(objects.clean_summary(pred_clean), objects.attacked_summary(pred_clean, pred_adv))


def component_frame(summaries: list[dict]) -> pd.DataFrame:
    """One row per component from stored summaries.

    Args:
        summaries: dicts with ``method``, ``seed``, ``image`` (index in the split) and the lists of
            :func:`component_summary`.

    Returns:
        Columns ``method, seed, image, class, area, correct_clean, flipped, recall_clean, recall_adv, iou_clean,
        iou_adv, flipped_share`` (``correct_clean`` and ``flipped`` in pixels).
    """
    rows = []
    for summary in summaries:
        missing = [k for k in ("method", "seed", "image", *SUMMARY_FIELDS) if k not in summary]
        if missing:
            raise ValueError(f"component summary lacks {missing}")
        part = pd.DataFrame({k: summary[k] for k in SUMMARY_FIELDS})
        part.insert(0, "image", summary["image"])
        part.insert(0, "seed", summary["seed"])
        part.insert(0, "method", summary["method"])
        rows.append(part)
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["method", "seed", "image",
                                                                                   *SUMMARY_FIELDS])
    area = frame["area"].astype(float)
    for when in ("clean", "adv"):
        frame[f"recall_{when}"] = frame[f"correct_{when}"] / area
        frame[f"iou_{when}"] = frame[f"correct_{when}"] / frame[f"union_{when}"].astype(float)
    frame["flipped_share"] = frame["flipped"] / area
    return frame.drop(columns=[c for c in SUMMARY_FIELDS if c not in ("class", "area", "correct_clean", "flipped")])


def size_terciles(areas) -> tuple[float, float]:
    """The 1/3 and 2/3 quantiles of component areas (the tercile edges)."""
    areas = np.asarray(areas, dtype=np.float64)
    if areas.size == 0:
        raise ValueError("size terciles need at least one component")
    low, high = np.quantile(areas, [1 / 3, 2 / 3])
    return float(low), float(high)


def tercile_of(areas, edges: tuple[float, float]) -> np.ndarray:
    """``"small"`` (area <= first edge), ``"medium"`` (<= second) or ``"large"`` per area."""
    return np.array(TERCILES, dtype=object)[np.searchsorted(np.asarray(edges), np.asarray(areas), side="left")]


def size_table(frame: pd.DataFrame, class_names: list[str] | None = None) -> pd.DataFrame:
    """Per method, size tercile and class (and ``all``): mean IoU and flipped share of the components, and the
    share of their clean-right pixels that flip.

    Args:
        frame: :func:`component_frame` rows (all seeds of every method, over one split).
        class_names: names of the class ids (default: the ids).

    Returns:
        Rows by method (in the order of their first row in ``frame``), tercile and class (``all`` first); columns
        ``method, tercile, class, components, area_range, iou_clean, iou_adv, recall_clean, recall_adv,
        flipped_share, flipped_of_right`` (in percent): means over components and seeds, and
        ``flipped_of_right``, the flipped pixels over the pixels right on the clean image, pooled over the group's
        components (a small object that is mostly wrong on the clean image has little left to flip: this column
        asks how much of what was right the attack took). The tercile edges come from the areas of all rows, so
        every method is cut at the same areas.
    """
    if frame.empty:
        raise ValueError("size table: no components")
    edges = size_terciles(frame["area"])
    frame = frame.assign(tercile=tercile_of(frame["area"], edges))
    if class_names is not None:
        frame = frame.assign(**{"class": [class_names[int(c)] for c in frame["class"]]})
    scores = ["iou_clean", "iou_adv", "recall_clean", "recall_adv", "flipped_share"]
    parts = [frame.groupby(["method", "tercile", "class"], sort=False),
             frame.assign(**{"class": "all"}).groupby(["method", "tercile", "class"], sort=False)]
    table = pd.concat([
        g[scores].mean().mul(100).join(g["area"].agg(["size", "min", "max"]))
        .assign(flipped_of_right=100 * g["flipped"].sum() / g["correct_clean"].sum().replace(0, np.nan))
        for g in parts]).reset_index()
    table["area_range"] = [f"{lo}-{hi}" for lo, hi in zip(table.pop("min"), table.pop("max"))]
    table = table.rename(columns={"size": "components"})
    methods = {name: i for i, name in enumerate(frame["method"].unique())}
    table = table.assign(method_rank=table["method"].map(methods),
                         tercile_rank=table["tercile"].map({name: i for i, name in enumerate(TERCILES)}),
                         class_rank=table["class"].map(lambda v: (v != "all", str(v))))
    table = table.sort_values(["method_rank", "tercile_rank", "class_rank"], kind="stable")
    return table[["method", "tercile", "class", "components", "area_range", *scores,
                  "flipped_of_right"]].reset_index(drop=True)


def size_figure(table: pd.DataFrame):
    """IoU (clean and under attack) and flipped pixels (of the clean-right ones, and of the area) per size tercile,
    one line per method (class ``all``).

    Returns:
        A matplotlib figure (the caller saves it).
    """
    import matplotlib.pyplot as plt

    overall = table[table["class"] == "all"]
    fig, (ax_iou, ax_flip) = plt.subplots(1, 2, figsize=(9, 3.5))
    x = np.arange(len(TERCILES))
    for method, rows in overall.groupby("method", sort=False):
        rows = rows.set_index("tercile").reindex(list(TERCILES))
        line = ax_iou.plot(x, rows["iou_adv"], marker="o", label=f"{method}")[0]
        ax_iou.plot(x, rows["iou_clean"], marker="o", linestyle=":", color=line.get_color())
        ax_flip.plot(x, rows["flipped_of_right"], marker="o", color=line.get_color(), label=method)
        ax_flip.plot(x, rows["flipped_share"], marker="o", linestyle=":", color=line.get_color())
    for ax, title in ((ax_iou, "component IoU: attacked (solid), clean (dotted)"),
                      (ax_flip, "flipped: of the right pixels (solid), of the area (dotted)")):
        ax.set_xticks(x, TERCILES)
        ax.set_xlabel("ground-truth component size tercile")
        ax.set_ylabel("%")
        ax.set_title(title, fontsize="small")
        ax.grid(alpha=0.3)
    ax_flip.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    fig.tight_layout()
    return fig
