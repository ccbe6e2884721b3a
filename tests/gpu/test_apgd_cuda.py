"""CUDA tests of APGD and SEA (device outputs, bf16 autocast, no host-device synchronisation): `pytest -m gpu`."""

import pytest
import torch

from eroseg.attacks import create_attack
from eroseg.attacks.apgd import ApgdRules
from tests.test_apgd import EPS, setup, size_of

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("name", ["apgd", "sea"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("radius_schedule", [False, True])
def test_cuda_no_host_sync(name, norm, radius_schedule):
    """On CUDA: outputs on the device, within budget, bf16 autocast, and no host-device synchronisation."""
    model, x, y = setup(batch=2)
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    extra = {"losses": ("masked_ce", "balanced_ce", "js", "masked_spherical", "eroseg")} if name == "sea" else \
        {"loss": "eroseg"}
    # Without the early stop, whose flag is the one host read per iteration.
    atk = create_attack(name, eps=EPS[norm], steps=6, norm=norm, radius_schedule=radius_schedule, amp=True,
                        rules=ApgdRules(early_stop="off"), **extra)
    g = torch.Generator(device="cuda").manual_seed(0)
    atk(model, x, y, generator=g)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        adv = atk(model, x, y, generator=g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert adv.is_cuda and adv.dtype == x.dtype
    assert size_of(adv - x, norm).max() <= EPS[norm] + 1e-6 and adv.min() >= 0 and adv.max() <= 1
