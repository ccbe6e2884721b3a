"""Training augmentation whose randomness is a function of ``(seed, epoch, step / sample)`` only.

So a resumed run, any DataLoader worker and any process of a data-parallel run draw the same crops and
flips as one uninterrupted process would.
"""

from __future__ import annotations

import torch

from eroseg.seeds import generator


class KeyedAugment(torch.utils.data.Dataset):
    """Random scale + crop whose randomness depends only on ``(seed, key)``.

    The loader asks for key ``epoch * n + i`` (sample ``i`` in epoch
    ``epoch``), so an augmentation is the same in a resumed run, in any
    DataLoader worker and in any process of a data-parallel run.
    """

    def __init__(self, base, crop_size, scale_range, seed: int):
        from eroseg.data.transforms import RandomScaleCrop

        self.base, self.seed = base, seed
        self.make = lambda g: RandomScaleCrop(tuple(scale_range), tuple(crop_size), generator=g)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int):
        image, label = self.base[key % len(self.base)]
        epoch, index = divmod(key, len(self.base))
        return self.make(generator(self.seed, "augment", epoch=epoch, step=index))(image, label)


def random_hflip(images: torch.Tensor, labels: torch.Tensor, *, probability: float, seed: int, epoch: int,
                 step: int, global_batch: int, lo: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each image (and its label) horizontally with ``probability``.

    The coins are drawn for the whole global batch of the step and sliced at this process's offset ``lo``,
    so N processes flip what one process would.
    """
    g = generator(seed, "flip", epoch=epoch, step=step)
    n = images.shape[0]
    flip = (torch.rand(global_batch, generator=g) < probability)[lo:lo + n].to(images.device)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    labels = torch.where(flip.view(-1, 1, 1), labels.flip(-1), labels)
    return images, labels
