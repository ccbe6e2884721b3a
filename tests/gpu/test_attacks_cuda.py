"""CUDA tests of the attack suite (device follows inputs, bf16 autocast, masks on device): `pytest -m gpu`."""

import pytest
import torch

from eroseg.attacks import create_attack
from eroseg.attacks.eroseg import eroseg_masks, masked_quantile
from eroseg.conventions import autocast
from tests.conftest import ATTACK_NAMES as NAMES
from tests.conftest import ToyNet as Tiny
from tests.conftest import attack_params as params
from tests.conftest import toy_batch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _setup():
    torch.manual_seed(0)
    model = Tiny().cuda().eval()
    x, y = toy_batch(4)
    return model, x.cuda(), y.cuda()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", NAMES)
def test_cuda_inputs_cuda_outputs_and_generators(name, norm):
    model, x, y = _setup()
    atk = create_attack(name, **params(name, norm))
    a = atk(model, x, y, generator=torch.Generator(device="cuda").manual_seed(0))
    assert a.is_cuda and a.dtype == x.dtype and (a - x).abs().max() > 0
    d = a - x
    size = d.abs().amax(dim=(1, 2, 3)) if norm == "linf" else d.flatten(1).norm(dim=1)
    assert size.max() <= params(name, norm)["eps"] + 1e-6 and a.min() >= 0 and a.max() <= 1
    # A CPU generator also works with CUDA inputs, and a seed still fixes the result.
    b1 = atk(model, x, y, generator=torch.Generator().manual_seed(1))
    b2 = atk(model, x, y, generator=torch.Generator().manual_seed(1))
    assert b1.is_cuda and torch.equal(b1, b2)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast(name):
    model, x, y = _setup()
    seen = []
    adv = create_attack(name, **params(name), amp=True)(model, x, y, callback=seen.append)
    assert adv.dtype == torch.float32 and (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert seen[0]["logits"].dtype == torch.float32  # the loss is computed in float32
    if name == "eroseg":
        assert all(seen[0][k].is_cuda for k in ("sensitive", "front", "attacked", "fooled"))


def test_eroseg_masks_cuda_match_cpu():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 33, 47, generator=g) * 4
    labels = torch.randint(0, 5, (6, 33, 47), generator=g)
    labels[2, :10] = 255
    valid = labels != 255
    for q in (0.0, 0.3, 0.5, 1.0):
        w_cpu, m_cpu = eroseg_masks(logits, labels, valid, q=q, kernel_size=5, gamma=0.2)
        w_gpu, m_gpu = eroseg_masks(logits.cuda(), labels.cuda(), valid.cuda(), q=q, kernel_size=5, gamma=0.2)
        assert torch.equal(w_gpu.cpu(), w_cpu)
        for k in ("sensitive", "front", "attacked", "fooled", "correct"):
            assert torch.equal(m_gpu[k].cpu(), m_cpu[k]), (q, k)
        v = torch.rand(6, 100, generator=g)
        m = torch.rand(6, 100, generator=g) < 0.5
        assert torch.equal(masked_quantile(v.cuda(), m.cuda(), q).cpu(), masked_quantile(v, m, q))


@pytest.mark.parametrize("name", NAMES)
def test_attack_loop_never_waits_for_the_gpu(name):
    """No host-device synchronisation inside an attack: weights, masks and best-iterate stay on the device."""
    model, x, y = _setup()
    atk = create_attack(name, **params(name), best_iterate=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    atk(model, x, y, generator=gen)  # warm-up (lazy initialisation may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        atk(model, x, y, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_conventions_autocast_runs_bf16_on_cuda():
    layer = torch.nn.Linear(4, 4).cuda()
    with autocast("cuda", True):
        assert layer(torch.ones(1, 4, device="cuda")).dtype == torch.bfloat16
