"""CUDA paths: bf16 autocast attacks and training, channels_last, GPU locks. `pytest -m gpu` on a GPU machine."""

import os
import subprocess
import sys

import pytest
import torch

from eroseg.attacks import create_attack
from eroseg.models import create_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _model():
    return create_model("Unet", "resnet18", 5, encoder_depth=3, decoder_channels=(16, 8, 8)).cuda().eval()


@pytest.mark.parametrize("name", ["fgsm", "pgd", "segpgd", "cospgd", "eroseg"])
@pytest.mark.parametrize("amp", [False, True])
def test_attacks_on_cuda_bf16(name, amp):
    model = _model().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (2, 64, 64), device="cuda")
    params = dict(eps=8 / 255, amp=amp)
    if name != "fgsm":
        params.update(step_size=2 / 255, steps=3)
    g = torch.Generator(device="cuda").manual_seed(0)
    adv = create_attack(name, **params)(model, x, y, generator=g)
    assert adv.is_cuda and adv.dtype == torch.float32
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > 0


def test_training_bf16_channels_last(tmp_path):
    from eroseg.training import TrainConfig, train
    from tests.conftest import HalfSplit as Toy

    cfg = TrainConfig.from_dict(dict(epochs=1, batch_size=4, amp=True, channels_last=True, val_robust_steps=1,
                                     val_robust_images=4))
    atk = create_attack("eroseg", eps=8 / 255, step_size=2 / 255, steps=2, amp=True)
    from eroseg.models import model_from_config
    from tests.conftest import TINY_UNET

    row = train(model_from_config(TINY_UNET, 2), train_set=Toy(16, size=32), val_set=Toy(8, size=32, seed=1),
                num_classes=2, model_cfg=TINY_UNET,
                cfg=cfg, attack=atk, out=tmp_path / "m.pt", log_path=tmp_path / "m.csv", device="cuda",
                progress=False, robust_attack=create_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=1))
    assert torch.isfinite(torch.tensor(row["loss"])) and 0 <= row["val_miou"] <= 1


def test_two_jobs_get_different_gpus_or_share_with_warning(tmp_path):
    code = ("import time, eroseg.device as d; print(d.select_device('auto'), flush=True); time.sleep(3)")
    env = dict(os.environ, EROSEG_GPU_LOCK_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate()[0].strip() for p in procs]
    if torch.cuda.device_count() >= 2:
        assert outs[0] != outs[1]
    else:
        assert outs == ["cuda:0", "cuda:0"]
