"""Whole-image batches gathered by size across the split (eroseg.data.batching) and their use in evaluate()."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from eroseg.data.batching import dataset_order, sample_size, size_batches, size_bucketed_batches
from eroseg.evaluate import evaluate

# Sizes in a shuffled order, as in a VOC val list (landscape, portrait, square), scaled down.
SIZES = [(15, 20), (20, 15), (15, 20), (13, 20), (20, 20), (20, 15), (15, 20), (20, 13), (15, 20), (20, 15),
         (13, 20), (20, 20), (15, 20)]


class MixedSizes(torch.utils.data.Dataset):
    """Two classes split by a noisy diagonal; every image differs (its own noise) and sizes are mixed."""

    def __len__(self):
        return len(SIZES)

    def __getitem__(self, i):
        h, w = SIZES[i]
        g = torch.Generator().manual_seed(i)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        label = (yy + xx >= (h + w) // 2 + i % 3).long()
        label[0, :3] = 255
        image = (0.4 + 0.06 * label.float()).expand(3, h, w) + 0.03 * torch.randn(3, h, w, generator=g)
        return image.clamp(0, 1), label


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))

    def forward(self, x):
        return self.net((x - 0.43) / 0.05)


def test_size_batches_groups_exact_sizes_across_the_split():
    batches = size_batches(SIZES, 3)
    # Worked by hand: (15,20) at 0,2,6,8,12; (20,15) at 1,5,9; (13,20) at 3,10; (20,20) at 4,11; (20,13) at 7.
    assert batches == [[0, 2, 6], [1, 5, 9], [3, 10], [4, 11], [7], [8, 12]]
    assert all(len({SIZES[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(SIZES)))
    # Batch 1 keeps the sequential order; one size gives the sequential chunks.
    assert size_batches(SIZES, 1) == [[i] for i in range(len(SIZES))]
    assert size_batches([(8, 8)] * 5, 2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="batch_size"):
        size_batches(SIZES, 0)


def test_batches_carry_their_indices_and_dataset_order_restores_it():
    ds = MixedSizes()
    seen = []
    for indices, images, labels in size_bucketed_batches(ds, 4):
        assert images.shape[0] == labels.shape[0] == len(indices)
        for j, i in enumerate(indices):
            image, label = ds[i]
            assert torch.equal(images[j], image) and torch.equal(labels[j], label)
        seen.append(indices)
    assert len(seen) == 6  # gathered across the split (consecutive runs of one size would give 13 batches)
    rows = np.concatenate(seen)
    assert list(rows[dataset_order(seen)]) == list(range(len(ds)))
    with pytest.raises(ValueError, match="more than one batch"):
        dataset_order([[0, 1], [1]])


def test_sample_size_reads_the_image_header_through_a_subset(tmp_path):
    class Files(torch.utils.data.Dataset):
        transform = None

        def __len__(self):
            return 2

        def image_path(self, i):
            return tmp_path / f"{i}.png"

        def __getitem__(self, i):
            raise AssertionError("the header suffices; no decoding")

    Image.new("RGB", (7, 5)).save(tmp_path / "0.png")
    Image.new("RGB", (4, 9)).save(tmp_path / "1.png")
    assert sample_size(Files(), 0) == (5, 7)
    assert sample_size(torch.utils.data.Subset(Files(), [1, 0]), 0) == (9, 4)
    assert sample_size(MixedSizes(), 1) == (20, 15)  # no size(), no file: decoded


@pytest.mark.parametrize("attack_name", ["pgd", "eroseg"])
def test_batched_evaluation_equals_batch_one_per_image(attack_name):
    from eroseg.attacks import create_attack

    attack = create_attack(attack_name, eps=8 / 255, step_size=2 / 255, steps=3, random_start=False)
    model = Tiny().eval()
    one = evaluate(model, MixedSizes(), 2, attack=attack, batch_size=1, num_samples=3)
    many = evaluate(model, MixedSizes(), 2, attack=attack, batch_size=4, num_samples=3)
    for key in ("tp", "pred", "label"):
        assert np.array_equal(getattr(one["per_image"], key), getattr(many["per_image"], key)), key
    assert one["metrics"] == many["metrics"]
    # The attack did something, and the counts are in dataset order (image i has i's labelled pixels).
    assert one["metrics"]["miou"] < evaluate(model, MixedSizes(), 2, batch_size=4)["metrics"]["miou"]
    for i in range(len(SIZES)):
        label = MixedSizes()[i][1]
        assert many["per_image"].label[i].tolist() == [int((label == c).sum()) for c in (0, 1)]
    # The samples are the dataset's first images, in order, whatever batch they came in.
    assert np.array_equal(one["samples"]["label"], many["samples"]["label"])
    assert many["samples"]["label"].shape == (3, 20, 20)
