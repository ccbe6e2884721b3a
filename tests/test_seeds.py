"""Tests of the random streams of eroseg.seeds: training streams and the evaluation's attack streams."""

import pytest
import torch

from eroseg.evaluate import evaluate
from eroseg.seeds import evaluation_generator, evaluation_seed, stream_seed

#: Seeds of the evaluation streams as the evaluation derived them before they moved to eroseg.seeds
#: (commit a3c1d36, ``eroseg.evaluate._generator``): results of existing evaluations depend on them.
EVALUATION_SEEDS = {(0, 0, 0): 7896617691693857887, (0, 1, 0): 2918264622725855778,
                    (3, 2, 1): 4404663168949438663, (2**32 - 1, 7, 4): 91087485037733333}


@pytest.mark.parametrize("words,expected", EVALUATION_SEEDS.items())
def test_evaluation_seeds_are_those_of_earlier_evaluations(words, expected):
    assert evaluation_seed(*words) == expected
    assert evaluation_generator(*words).initial_seed() == expected


def test_evaluation_seeds_are_distinct_and_apart_from_the_training_streams():
    seeds = {evaluation_seed(s, b, r) for s in range(3) for b in range(3) for r in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)
    assert evaluation_seed(0, 0, 0) != stream_seed(0, "attack")


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True, "0"])
def test_evaluation_seed_refuses_words_outside_32_bits(bad):
    with pytest.raises(ValueError, match=r"batch_index must be an integer in \[0, 2\*\*32\)"):
        evaluation_seed(0, bad)


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.full((3, 4, 4), i / 10), torch.zeros(4, 4, dtype=torch.long)


def test_evaluate_gives_each_batch_and_restart_its_evaluation_stream():
    """An attack run by evaluate() draws from evaluation_generator(seed, batch, restart): 3 batches x 2 restarts."""
    drawn = []

    def attack(model, images, labels, *, generator):
        drawn.append(generator.initial_seed())
        return images

    model = torch.nn.Conv2d(3, 2, 1)
    evaluate(model, _Images(), 2, attack=attack, batch_size=2, seed=3, restarts=2, num_workers=0)
    assert drawn == [evaluation_seed(3, batch, restart) for batch in range(3) for restart in range(2)]
