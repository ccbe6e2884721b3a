"""Metrics against hand-worked confusion matrices."""


import numpy as np
import pytest
import torch

from eroseg.metrics import (
    ConfusionMatrix,
    PerImageStats,
    confusion_matrix,
    per_image_stats,
    scores_from_confusion,
    worst_case_stats,
)


def test_confusion_matrix_hand_worked():
    # labels / preds over 3 classes; one void pixel (255) predicted as 2 must be skipped.
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    m = confusion_matrix(pred, label, 3)
    expected = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    assert torch.equal(m, expected)
    s = scores_from_confusion(m)
    # IoU_0 = 1/(1+2+3-... ) : tp=1, pred=3, label=2 -> 1/4; IoU_1: tp=2, pred=3, label=3 -> 2/4;
    # IoU_2: tp=1, pred=1, label=2 -> 1/2
    assert s["per_class_iou"] == pytest.approx([0.25, 0.5, 0.5])
    assert s["miou"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert s["pixel_acc"] == pytest.approx(4 / 7)


def test_absent_class_is_nan_and_excluded_from_miou():
    label = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 0], [1, 0]])
    s = scores_from_confusion(confusion_matrix(pred, label, 3))
    assert s["per_class_iou"][2] is None
    assert s["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_accumulation_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (6, 8, 8), generator=g)
    label[0, :2] = 255
    pred = torch.randint(0, 4, (6, 8, 8), generator=g)
    cm = ConfusionMatrix(4)
    cm.update(pred[:3], label[:3])
    cm.update(pred[3:], label[3:])
    assert torch.equal(cm.matrix, confusion_matrix(pred, label, 4))


def test_out_of_range_label_raises_with_value():
    with pytest.raises(ValueError, match="7"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7), 3)


def test_per_image_stats_rebuild_dataset_scores():
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 3, (5, 6, 7), generator=g)
    label[:, 0, 0] = 255
    pred = torch.randint(0, 3, (5, 6, 7), generator=g)
    st = per_image_stats(pred, label, 3)
    assert st.tp.shape == (5, 3)
    ref = scores_from_confusion(confusion_matrix(pred, label, 3))
    assert st.scores()["miou"] == pytest.approx(ref["miou"])
    assert st.scores()["pixel_acc"] == pytest.approx(ref["pixel_acc"])
    acc0 = ((pred[0] == label[0]) & (label[0] != 255)).sum() / (label[0] != 255).sum()
    assert st.pixel_acc[0] == pytest.approx(float(acc0))
    again = PerImageStats.from_dict(st.to_dict())
    assert np.array_equal(again.tp, st.tp) and np.array_equal(again.pred, st.pred)


def test_worst_case_picks_lowest_accuracy_per_image():
    label = torch.zeros(2, 2, 2, dtype=torch.long)
    # attack a: image 0 fully fooled, image 1 intact; attack b: the opposite half-way.
    pa = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)]).long()
    pb = torch.stack([torch.zeros(2, 2), torch.tensor([[1, 1], [0, 0]])]).long()
    sa, sb = per_image_stats(pa, label, 2), per_image_stats(pb, label, 2)
    chosen, names = worst_case_stats({"a": sa, "b": sb}, rule="pixel_acc")
    assert names == ["a", "b"]
    assert chosen.pixel_acc.tolist() == [0.0, 0.5]
    assert np.all(chosen.pixel_acc <= np.minimum(sa.pixel_acc, sb.pixel_acc))
    with pytest.raises(ValueError, match="different numbers"):
        worst_case_stats({"a": sa, "c": per_image_stats(pa[:1], label[:1], 2)})


def _stats_from_confusions(conf) -> PerImageStats:
    conf = np.asarray(conf)  # [N, C, C]: rows label, columns prediction
    return PerImageStats(np.stack([np.diag(c) for c in conf]), conf.sum(1), conf.sum(2))


def test_pixel_accuracy_worst_case_can_beat_its_own_attack_and_the_miou_rule_cannot():
    # Hand-made counts (2 images, 2 classes). Pixel accuracy, image 0: a 5/6 = b 5/6 (tie -> a);
    # image 1: a 4/5 > b 3/5 -> b. That choice has tp (1, 7), pred (3, 8), label (2, 9):
    # IoU 1/4 and 7/10, mIoU 0.475, above attack a alone (tp (0, 9), pred (0, 11): IoU 0 and 9/11 -> 0.409).
    a = _stats_from_confusions([[[0, 1], [0, 5]], [[0, 1], [0, 4]]])
    b = _stats_from_confusions([[[1, 0], [1, 4]], [[1, 0], [2, 2]]])
    by_acc, names = worst_case_stats({"a": a, "b": b}, rule="pixel_acc")
    assert names == ["a", "b"]
    assert by_acc.scores()["miou"] == pytest.approx(0.475)
    assert a.scores()["miou"] == pytest.approx(9 / 22)
    by_miou, names = worst_case_stats({"a": a, "b": b})
    assert by_miou.scores()["miou"] == pytest.approx(9 / 22)
    assert names == ["a", "a"]
    with pytest.raises(ValueError, match="rule"):
        worst_case_stats({"a": a}, rule="accuracy")


def test_miou_worst_case_never_above_any_attack_nor_the_pixel_accuracy_rule():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n, c, k = 6, 3, 3
        labels = rng.integers(0, 8, size=(n, c))
        per = {}
        for j in range(k):
            conf = np.zeros((n, c, c), dtype=np.int64)
            for i in range(n):
                for cls in range(c):
                    conf[i, cls] = rng.multinomial(labels[i, cls], rng.dirichlet(np.ones(c)))
            per[f"atk{j}"] = _stats_from_confusions(conf)
        worst, names = worst_case_stats(per)
        m = worst.scores()["miou"]
        assert all(m <= s.scores()["miou"] + 1e-12 for s in per.values())
        assert m <= worst_case_stats(per, rule="pixel_acc")[0].scores()["miou"] + 1e-12
        assert np.array_equal(worst.label, per["atk0"].label)
        # the returned names reproduce the returned counts
        rebuilt = np.stack([per[nm].tp[i] for i, nm in enumerate(names)])
        assert np.array_equal(rebuilt, worst.tp)
