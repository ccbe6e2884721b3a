"""adv-lib's minimal-norm segmentation attacks behind one signature, each result checked by our own forward pass.

:func:`run_min_norm` runs ``alma_prox`` (Rony et al., CVPR 2023,
https://arxiv.org/abs/2206.07179), ``pdpgd`` and ``pdgd`` (Matyasko & Chau,
https://arxiv.org/abs/2106.01538, adapted to segmentation by adv-lib), ``dag``
(Xie et al., ICCV 2017, https://arxiv.org/abs/1703.08603) from
adversarial-library 0.2.8 (``asma`` is left out: :data:`NOT_WRAPPED`) and
never trusts what it returns: ``dag`` returns the clean image when it fails and
``alma_prox`` its best non-adversarial try, so success, the fooled share and the
norm are recomputed from one forward pass (norm = inf where the share stays
below ``adv_threshold``). What the wrapper works around in adv-lib 0.2.8 (the
module-level ``visdom`` import, ``alma_prox``'s crash on batches with different
numbers of valid pixels, the ``torch.compile`` of its proximal operator) is
written up in docs/adv_lib.md.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import sys
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from eroseg.attacks.core import eval_mode
from eroseg.metrics import IGNORE_INDEX
from eroseg.minnorm.catalog import (  # noqa: F401  (re-exported: the wrapper's public names)
    ADV_LIB_VERSION,
    INSTALL_HINT,
    MIN_NORM_ATTACKS,
    NORMS,
    NOT_WRAPPED,
    MinNormAttack,
    attack_arguments,
)


@dataclass
class MinNormResult:
    """What a minimal-norm attack found on a batch, as checked by :func:`verify_min_norm`.

    Attributes:
        adv: ``[B, C, H, W]`` adversarial images in [0, 1] (the attack's best try, also where it failed).
        norm: ``[B]`` norm of the perturbation where the attack succeeded, ``inf`` where it did not,
            NaN for an image without valid pixels (not attacked).
        perturbation_norm: ``[B]`` norm of ``adv - images`` whether or not it succeeded.
        fooled_share: ``[B]`` share of valid pixels whose prediction differs from the label (NaN: no valid pixels).
        success: ``[B]`` bool, ``fooled_share >= adv_threshold``.
    """

    adv: torch.Tensor
    norm: torch.Tensor
    perturbation_norm: torch.Tensor
    fooled_share: torch.Tensor
    success: torch.Tensor


def perturbation_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image ``||delta||`` (``[B]``) in ``"linf"`` or ``"l2"``."""
    return delta.flatten(1).norm(p=NORMS[norm], dim=1)


@contextlib.contextmanager
def _visdom_placeholder() -> Iterator[None]:
    """Let adv-lib import without visdom: a stand-in module for the duration of the import only.

    adv-lib imports ``visdom`` at module level for its ``VisdomLogger``, which
    the attacks use only when given one as ``callback`` (this wrapper never
    does). Where visdom is installed nothing changes; where it is not, a module
    whose ``Visdom`` raises is put in ``sys.modules`` while adv-lib imports and
    taken out afterwards, so later ``import visdom`` elsewhere still fails as usual.
    """
    try:
        import visdom  # noqa: F401
        yield
        return
    except ImportError:
        pass
    stand_in = types.ModuleType("visdom")

    def _no_visdom(*_args, **_kwargs):
        raise ImportError("visdom is not installed; adv-lib's VisdomLogger needs it (pip install visdom)")

    stand_in.Visdom = _no_visdom
    sys.modules["visdom"] = stand_in
    try:
        yield
    finally:
        if sys.modules.get("visdom") is stand_in:
            del sys.modules["visdom"]


@functools.cache
def adv_lib_segmentation() -> types.ModuleType:
    """``adv_lib.attacks.segmentation``, imported on first use.

    Raises:
        ImportError: adv-lib is not installed (names the extra to install).
    """
    try:
        with _visdom_placeholder():
            module = importlib.import_module("adv_lib.attacks.segmentation")
    except ImportError as err:
        raise ImportError(f"minimal-norm attacks need adv-lib, which is not installed ({err}); "
                          f"install it with: {INSTALL_HINT}") from err
    version = importlib.metadata.version("adv-lib")
    if version != ADV_LIB_VERSION:
        warnings.warn(f"adv-lib {version} is installed; eroseg's minimal-norm wrapper is tested with "
                      f"{ADV_LIB_VERSION} ({INSTALL_HINT})", stacklevel=2)
    return module


def constraint_groups(valid_counts: torch.Tensor, *, masking: bool, decay: bool, adv_threshold: float,
                      steps: int) -> list[torch.Tensor]:
    """Indices of the images that can be attacked together (images without valid pixels are left out).

    adv-lib 0.2.8's constraint masking (``alma_prox``'s default) lets an image
    violate its ``k`` largest constraints, ``k = floor((1 - adv_threshold) * m
    * t / (steps - 1))`` at step ``t`` for an image of ``m`` valid pixels
    (without ``mask_decay``: ``floor((1 - adv_threshold) * m)``), and reads the
    ``k``-th largest at index ``k - 1``: in a batch where one image has ``k = 0``
    and another ``k > 0`` that index is -1 and the attack raises. ``k`` never
    falls, so images whose ``k`` first becomes positive at the same step never
    disagree on it; they are grouped by that step (computed with adv-lib's own
    arithmetic). Without masking, every image goes in one group.
    """
    attacked = torch.nonzero(valid_counts > 0).flatten()
    if not attacked.numel():
        return []
    if not masking:
        return [attacked]
    share = (1 - adv_threshold) * valid_counts[attacked].cpu()
    if decay and steps > 1:
        k = torch.stack([share.mul(t / (steps - 1)).long() for t in range(steps)], dim=1)  # [B, steps]
        positive = k > 0
        first = torch.where(positive.any(1), positive.float().argmax(1), torch.full_like(share, steps).long())
    else:
        first = (share.long() > 0).long()
    return [attacked[(first == value).to(attacked.device)] for value in torch.unique(first)]


def _eager(compile_prox: bool):
    """Run ``torch.compile``d code eagerly (adv-lib compiles ``alma_prox``'s proximal operator).

    On the CPU the first compiled call took 104 s and its graph breaks at
    ``Tensor.item()`` (docs/adv_lib.md); eager costs nothing up front.
    ``torch.compiler.set_stance`` exists from torch 2.6; older versions compile.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    if compile_prox or set_stance is None:
        return contextlib.nullcontext()
    return set_stance("force_eager")


@torch.no_grad()
def verify_min_norm(model: torch.nn.Module, images: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor, *,
                    norm: str = "linf", adv_threshold: float = 0.99, ignore_index: int = IGNORE_INDEX
                    ) -> MinNormResult:
    """Check an attack's output with one forward pass: fooled share, success and norm per image.

    The fooled share is the share of valid pixels (label != ``ignore_index``)
    predicted as another class; the attack succeeded on an image when the share
    reaches ``adv_threshold``; its norm is ``||adv - images||`` there and
    ``inf`` elsewhere (NaN for an image without valid pixels).

    Shape:
        images, adv: ``[B, C, H, W]``; labels: ``[B, H, W]``; every field of the result ``[B]`` (``adv`` as given).
    """
    with eval_mode(model):
        pred = model(adv).argmax(1)
    valid = labels != ignore_index
    counts = valid.flatten(1).sum(1)
    fooled = ((pred != labels) & valid).flatten(1).sum(1)
    nan = torch.full_like(fooled, float("nan"), dtype=torch.float)
    share = torch.where(counts > 0, fooled / counts.clamp_min(1), nan)
    success = (counts > 0) & (share >= adv_threshold)
    size = perturbation_norms((adv - images).float(), norm)
    found = torch.where(success, size, torch.full_like(size, float("inf")))
    found = torch.where(counts > 0, found, torch.full_like(size, float("nan")))
    return MinNormResult(adv=adv, norm=found, perturbation_norm=size, fooled_share=share.float(), success=success)


def run_min_norm(name: str, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                 norm: str = "linf", adv_threshold: float = 0.99, steps: int | None = None,
                 ignore_index: int = IGNORE_INDEX, seed: int = 0, compile_prox: bool = False,
                 **params: Any) -> MinNormResult:
    """Run adv-lib's minimal-norm attack ``name`` on a batch and check its result.

    Args:
        name: one of :data:`MIN_NORM_ATTACKS` (``alma_prox``, ``pdpgd``, ``dag`` for Linf;
            ``pdpgd``, ``dag``, ``pdgd`` for L2).
        model: segmentation model taking images in [0, 1], returning logits ``[B, K, H, W]`` (K >= 3 for alma_prox).
        images: ``[B, C, H, W]`` in [0, 1].
        labels: ``[B, H, W]`` integer labels; ``ignore_index`` marks void pixels (never counted, never attacked).
        norm: ``"linf"`` or ``"l2"``.
        adv_threshold: share of an image's valid pixels that must be fooled.
        steps: iterations (adv-lib's ``num_steps`` / ``max_iter``; None: adv-lib's default).
        ignore_index: void label.
        seed: seeds the random start of ``pdpgd`` / ``pdgd`` (``random_init``); the global RNG is restored after.
        compile_prox: keep adv-lib's ``torch.compile`` of ``alma_prox``'s proximal operator (default: eager).
        **params: the attack's own parameters under ASCII names (``gamma`` for adv-lib's ``γ``, ``mu_init``
            for ``μ_init``...; :data:`MIN_NORM_ATTACKS` lists them).

    Returns:
        :class:`MinNormResult`. Where adv-lib's constraint masking is on, the batch is split into the groups
        of :func:`constraint_groups`; images without valid pixels are returned as they are.

    Raises:
        ValueError: bad arguments (see :func:`attack_arguments`) or shapes.
        ImportError: adv-lib is not installed.
    """
    spec, kwargs = attack_arguments(name, norm, adv_threshold, steps, params)
    if images.dim() != 4 or labels.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"{name}: expected images [B, C, H, W] and labels [B, H, W], "
                         f"got {tuple(images.shape)} and {tuple(labels.shape)}")
    attack = getattr(adv_lib_segmentation(), spec.function)
    images, labels = images.detach(), labels.detach().long()
    masks = labels != ignore_index
    masking = bool(kwargs.get("constraint_masking", spec.masking_default))
    decay = bool(kwargs.get("mask_decay", spec.masking_default))
    groups = constraint_groups(masks.flatten(1).sum(1), masking=masking, decay=decay, adv_threshold=adv_threshold,
                               steps=kwargs[spec.steps_arg])
    adv = images.clone()
    devices = [images.device] if images.is_cuda else []
    with eval_mode(model), torch.enable_grad(), _eager(compile_prox), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for group in groups:
            adv[group] = attack(model, images[group], labels[group], masks=masks[group], **kwargs).detach()
    adv = adv.clamp(0, 1)
    return verify_min_norm(model, images, adv, labels, norm=norm, adv_threshold=adv_threshold,
                           ignore_index=ignore_index)
