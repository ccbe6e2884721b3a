"""One training job as ``eroseg train`` runs it: settings from the command line, data, model, :func:`train`."""

from __future__ import annotations

import os

import torch

from eroseg.numbers import resolve_attack_params
from eroseg.training.config import TrainConfig
from eroseg.training.distributed import init_distributed
from eroseg.training.loop import train
from eroseg.training.tasks import check_objective


def _attack(name: str | None, params: dict):
    if not name or name == "none":
        return None
    from eroseg.attacks import create_attack

    return create_attack(name, **resolve_attack_params(params))


def run_training_job(*, dataset: str, root: str, train_split: str, val_split: str | None, model_cfg: dict,
                     train_settings: dict, objective: dict, method: str, attack: str | None, attack_params: dict,
                     robust_eps, robust_step_size, seed: int, device: str, out: str, log: str,
                     progress: bool, split_lists: str | None = None) -> dict:
    """Check the settings, load the data, build the model and :func:`train` it (under torchrun, in every process).

    Args:
        dataset, root, train_split, val_split: the data (``val_split`` empty: no per-epoch validation).
        model_cfg: :func:`eroseg.models.model_from_config`'s config.
        train_settings: :class:`TrainConfig` fields (``--train``).
        objective: ``{"name": ..., <parameters>}`` (``--objective``; empty: adversarial training with ``attack``).
        method: the method name stored in the checkpoint.
        attack, attack_params: the training attack and its parameters (``"none"``: no attack).
        robust_eps, robust_step_size: the per-epoch robust check (PGD, ``train.val_robust_steps`` steps);
            ``robust_eps`` ``None``: no check.
        seed: run seed; device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        out, log: the checkpoint and the per-epoch CSV log.
        progress: show a progress bar (first process only).
        split_lists: the folder of carved split lists (``eroseg prepare --split-lists``): split ``tune`` is read
            from it and the training split loses those images; None: the dataset's own lists.

    Returns:
        :func:`train`'s final log row.
    """
    from eroseg.data import dataset_info, get_dataset
    from eroseg.device import select_device
    from eroseg.io import check_writable_dir
    from eroseg.models import model_from_config
    from eroseg.seeds import stream_seed

    cfg = TrainConfig.from_dict(train_settings)
    check_objective(objective, "--objective")
    check_writable_dir(out, "checkpoint (--out)")
    check_writable_dir(log, "training log (--log)")
    rank, _ = init_distributed()
    info = dataset_info(dataset)
    device = select_device(device)
    training_attack = _attack(attack, {**attack_params, "amp": cfg.amp})
    robust = None
    if cfg.val_robust_steps > 0 and robust_eps:
        robust = _attack("pgd", {"eps": robust_eps, "step_size": robust_step_size, "steps": cfg.val_robust_steps,
                                 "amp": cfg.amp})
    root = os.path.expandvars(os.path.expanduser(root))
    lists = {"split_lists": split_lists} if split_lists else {}
    train_set = get_dataset(dataset, root, train_split, **lists)
    val_set = get_dataset(dataset, root, val_split, **lists) if val_split else None
    torch.manual_seed(stream_seed(seed, "init"))  # the same initial weights in every process
    model = model_from_config(model_cfg, info.num_classes)
    return train(
        model, train_set=train_set, val_set=val_set, num_classes=info.num_classes, model_cfg=model_cfg, cfg=cfg,
        attack=training_attack, out=out, log_path=log, seed=seed, device=device,
        meta={"method": method, "attack": attack, "attack_params": attack_params, "dataset": dataset,
              "classes": list(info.classes)},
        robust_attack=robust, progress=progress and rank == 0, objective=objective,
    )
