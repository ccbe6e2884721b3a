"""Two-process data-parallel training (gloo, CPU) matches one process with the same global batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from eroseg.models import SegmentationModel, load_checkpoint

MODEL = {"arch": "tiny"}


def _tiny_model(num_classes=2):
    # No batch norm: on CPU there is no SyncBatchNorm, so per-process BN statistics would
    # legitimately differ from one process's; the comparison is about gradient averaging,
    # sharding and augmentation.
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, num_classes, 3, padding=1)
    )
    return SegmentationModel(net, pad_multiple=1)


def _train(out, log):
    import eroseg.training as t
    from tests.conftest import HalfSplit as Toy

    cfg = t.TrainConfig.from_dict(dict(epochs=2, batch_size=4, lr=0.05, hflip=0.5, amp=False, val_robust_steps=0))
    t.train(_tiny_model(), train_set=Toy(16), val_set=None, num_classes=2, model_cfg=MODEL, cfg=cfg, attack=None,
            out=out, log_path=log, seed=3, progress=False)


def _worker(rank, port, out, log):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from eroseg.training import init_distributed

    init_distributed()
    try:
        _train(out, log)
    finally:
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_process_gloo_matches_single_process(tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    _train(tmp_path / "single.pt", tmp_path / "single.csv")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "ddp.pt"), str(tmp_path / "ddp.csv")), nprocs=2)
    a = load_checkpoint(tmp_path / "single.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "ddp.pt")["state_dict"]
    moved = max(float((a[k] - _tiny_model().state_dict()[k]).abs().max()) for k in a)
    assert moved > 1e-3, "training did not move the weights; the comparison would be vacuous"
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, float((a[k] - b[k]).abs().max()))
