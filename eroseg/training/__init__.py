"""Standard and adversarial training, resumable, with a per-epoch CSV log; one module per job.

- :mod:`~eroseg.training.config`: :class:`TrainConfig`, the hyper-parameters every method shares;
- :mod:`~eroseg.training.tasks`: the training objectives (:data:`TASKS`: ``adversarial``, ``trades``);
- :mod:`~eroseg.training.loop`: :func:`train` and its named steps;
- :mod:`~eroseg.training.checkpoint`: partial checkpoints, resume (:data:`RUN_IDENTITY`), divergence guards;
- :mod:`~eroseg.training.augment`: crops and flips keyed by ``(seed, epoch, step)``;
- :mod:`~eroseg.training.distributed`: ``torchrun`` set-up;
- :mod:`~eroseg.training.job`: one ``eroseg train`` job (data, model, :func:`train`).

Every method is the same loop with a different task: the task gets a batch, makes its adversarial images
(with the model in eval mode, so attack passes never update batch-norm statistics) and returns the loss of
the update, which runs in train mode. ``standard`` is the adversarial objective without an attack.
"""

from eroseg.training.augment import KeyedAugment
from eroseg.training.checkpoint import (
    RUN_IDENTITY,
    LossExplosionError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    TrainingDivergedError,
    TrainState,
    identity_difference,
)
from eroseg.training.config import ConfigTypeError, TrainConfig
from eroseg.training.distributed import init_distributed
from eroseg.training.job import run_training_job
from eroseg.training.loop import LOG_COLUMNS, lr_at, train
from eroseg.training.tasks import (
    DEFAULT_OBJECTIVE,
    TASKS,
    AdversarialTraining,
    TradesTraining,
    TrainingTask,
    adversarial_counts,
    check_objective,
    create_task,
    trades_adversarial,
    trades_loss,
)

__all__ = [
    "DEFAULT_OBJECTIVE", "LOG_COLUMNS", "RUN_IDENTITY", "TASKS", "AdversarialTraining", "ConfigTypeError",
    "KeyedAugment", "LossExplosionError", "NonFiniteLossError", "NonFiniteWeightsError", "TradesTraining",
    "TrainConfig", "TrainState", "TrainingDivergedError", "TrainingTask", "adversarial_counts", "check_objective",
    "create_task", "identity_difference", "init_distributed", "lr_at", "run_training_job", "trades_adversarial",
    "trades_loss", "train",
]
