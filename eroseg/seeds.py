"""One source for every random stream: ``stream_seed(seed, purpose, epoch=, step=, rank=)``.

Training, validation and ``eroseg attack`` draw their random numbers (shuffling,
crops, flips, attack random starts, model initialisation) from generators
seeded here, never from a global stream, so a resumed run continues exactly
where it stopped and every process of a data-parallel run knows which numbers
the others use.

The seed of a stream is derived with :class:`numpy.random.SeedSequence` from
the five words ``(seed, purpose, epoch, step, rank)``, each below 2**32, so two
different tuples never share an input (hand-mixed formulas such as
``seed + 7 * rank`` made seed 7 on rank 0 equal to seed 0 on rank 1); the
64-bit outputs of distinct inputs collide only by chance (about 1 in 2**64 per
pair).

Evaluations seed the random starts of their attacks per batch and restart
with :func:`evaluation_seed`, from the three words ``(seed, batch, restart)``.
"""

from __future__ import annotations

import numpy as np
import torch

#: The purposes a stream can serve; a new purpose is appended (never inserted),
#: so that the streams of the existing ones do not change.
PURPOSES = ("init", "shuffle", "augment", "flip", "attack", "global", "val_robust", "export")

_WORD = 2**32


def _check_words(**words) -> None:
    """Raise ``ValueError`` naming the first value that is not an integer in [0, 2**32)."""
    for name, value in words.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < _WORD:
            raise ValueError(f"{name} must be an integer in [0, 2**32), got {value!r}")


def stream_seed(seed: int, purpose: str, *, epoch: int = 0, step: int = 0, rank: int = 0) -> int:
    """The 64-bit seed of the random stream for ``(seed, purpose, epoch, step, rank)``.

    Args:
        seed: the run seed, in [0, 2**32).
        purpose: one of :data:`PURPOSES` (what the numbers are for).
        epoch: 0-based epoch (or another counter of the purpose).
        step: 0-based step in the epoch (or sample / batch index).
        rank: process rank (0 for streams that every process must share).

    Returns:
        An integer in [0, 2**64), for ``torch.Generator.manual_seed``.

    Raises:
        ValueError: unknown purpose, or a value that is not an integer in [0, 2**32).
    """
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random-stream purpose {purpose!r}; valid: {', '.join(PURPOSES)}")
    _check_words(seed=seed, epoch=epoch, step=step, rank=rank)
    words = [int(seed), PURPOSES.index(purpose), int(epoch), int(step), int(rank)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


def generator(
    seed: int, purpose: str, *, epoch: int = 0, step: int = 0, rank: int = 0, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`stream_seed`."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(stream_seed(seed, purpose, epoch=epoch, step=step, rank=rank))
    return g


def evaluation_seed(seed: int, batch_index: int, restart: int = 0) -> int:
    """The 63-bit seed of an evaluation's attack random starts for one batch and restart.

    :class:`numpy.random.SeedSequence` of the three words ``(seed,
    batch_index, restart)``, its first 64-bit word shifted right by one.
    Restart 0 is the stream of a single-run evaluation; distinct tuples give
    independent streams.

    Args:
        seed: the evaluation seed (``eroseg evaluate --seed``), in [0, 2**32).
        batch_index: 0-based index of the batch in the evaluation.
        restart: 0-based restart of the attack on that batch.

    Raises:
        ValueError: a value that is not an integer in [0, 2**32).
    """
    _check_words(seed=seed, batch_index=batch_index, restart=restart)
    words = [int(seed), int(batch_index), int(restart)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def evaluation_generator(seed: int, batch_index: int, restart: int = 0,
                         device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`evaluation_seed`."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(evaluation_seed(seed, batch_index, restart))
    return g
