"""Sliding-window inference (eroseg.inference): one differentiable forward over every window, on a real smp model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eroseg.attacks import create_attack
from eroseg.inference import SlidingWindow, inference_spec, window_grid, wrap_for_inference
from eroseg.models import model_from_config
from tests.conftest import TINY_UNET

CLASSES = 3


@pytest.fixture(scope="module")
def unet():
    """The tests' tiny smp U-Net (ResNet-18 at depth 3), float64 so that finite differences are exact enough."""
    torch.manual_seed(0)
    return model_from_config(TINY_UNET, CLASSES).double().eval()


def _images(batch=2, height=32, width=48, seed=1):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference_slide(model, images, crop, stride):
    """Slide inference written out window by window: each window's logits padded to the image, summed, averaged."""
    height, width = images.shape[-2:]
    total = count = 0
    for top in range(0, max(height - crop[0], 0) + stride[0], stride[0]):
        for left in range(0, max(width - crop[1], 0) + stride[1], stride[1]):
            bottom, right = min(top + crop[0], height), min(left + crop[1], width)
            top, left = max(bottom - crop[0], 0), max(right - crop[1], 0)
            pad = (left, width - right, top, height - bottom)
            total = total + F.pad(model(images[..., top:bottom, left:right]), pad)
            count = count + F.pad(torch.ones(1, 1, bottom - top, right - left, dtype=images.dtype), pad)
    return total / count


def test_windows_cover_the_image_and_end_at_its_edges():
    windows = window_grid(1024, 2048, (512, 1024), (341, 683))
    assert len(windows) == 9 and windows[-1] == (512, 1024, 1024, 2048)
    covered = torch.zeros(1024, 2048, dtype=torch.int64)
    for top, bottom, left, right in windows:
        assert (bottom - top, right - left) == (512, 1024)
        covered[top:bottom, left:right] += 1
    assert int(covered.min()) >= 1 and int(covered.max()) == 4
    assert window_grid(20, 30, (32, 32), (16, 16)) == [(0, 20, 0, 30)]  # a crop above the image: one cut window


def test_one_window_covering_the_image_equals_whole_inference_exactly(unet):
    images = _images()
    with torch.no_grad():
        whole = unet(images)
        for spec in ({"mode": "slide", "crop": [32, 48], "stride": [32, 48]},
                     {"mode": "slide", "crop": [64, 64], "stride": [8, 8]}):  # a crop above the image is cut to it
            assert torch.equal(wrap_for_inference(unet, spec)(images), whole)
    assert wrap_for_inference(unet, {"mode": "whole"}) is unet and wrap_for_inference(unet, None) is unet


def test_overlapping_windows_average_the_logits(unet):
    images = _images()
    slide = SlidingWindow(unet, (16, 32), (8, 16), windows_per_chunk=2)
    with torch.no_grad():
        out = slide(images)
        torch.testing.assert_close(out, _reference_slide(unet, images, (16, 32), (8, 16)), rtol=0, atol=1e-12)
        assert not torch.allclose(out, unet(images), atol=1e-3)  # the windows see less context: not whole inference


def test_attack_gradient_equals_the_finite_difference_of_the_averaged_logits(unet):
    images = _images(batch=1)
    labels = torch.randint(0, CLASSES, (1, 32, 48), generator=torch.Generator().manual_seed(2))
    slide = SlidingWindow(unet, (16, 32), (8, 16), windows_per_chunk=2)
    images.requires_grad_(True)
    loss = F.cross_entropy(slide(images), labels)  # the loss PGD differentiates
    (grad,) = torch.autograd.grad(loss, images)
    assert (grad.abs().sum(1) > 0).float().mean() > 0.99  # the gradient reaches (almost) every pixel
    assert all(p.grad is None for p in unet.parameters())
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = 1e-8  # small enough that no ReLU or max-pool of the model switches between the two points
    with torch.no_grad():
        plus = F.cross_entropy(_reference_slide(unet, images + h * direction, (16, 32), (8, 16)), labels)
        minus = F.cross_entropy(_reference_slide(unet, images - h * direction, (16, 32), (8, 16)), labels)
    finite = float((plus - minus) / (2 * h))
    assert abs(float((grad * direction).sum()) - finite) <= 1e-4 * abs(finite)


def test_chunked_and_unchunked_give_the_same_logits_and_gradients(unet):
    images = _images(batch=1)
    labels = torch.randint(0, CLASSES, (1, 32, 48), generator=torch.Generator().manual_seed(4))
    results = []
    for chunk in (1, 4):  # 6 windows: chunks of 1, and of 4 then 2
        x = images.clone().requires_grad_(True)
        out = SlidingWindow(unet, (16, 32), (8, 16), windows_per_chunk=chunk)(x)
        results.append((out.detach(), torch.autograd.grad(F.cross_entropy(out, labels), x)[0]))
    for out, grad in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(grad, results[0][1], rtol=0, atol=1e-12)


class _CountingModel(torch.nn.Module):
    """Records the largest number of crops per forward (checkpointed forwards run again in the backward)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.largest, self.calls = model, 0, 0

    def forward(self, x):
        self.largest, self.calls = max(self.largest, x.shape[0]), self.calls + 1
        return self.model(x)


def _saved_bytes(model, images) -> int:
    """Bytes autograd keeps from the forward pass for the backward (what a batch's attack step holds)."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(images.clone().requires_grad_(True))
    return sum(saved), out


def test_memory_of_a_batch_is_bounded_by_one_chunk(unet):
    images = _images(height=32, width=48)
    counting = _CountingModel(unet)
    slide = SlidingWindow(counting, (16, 16), (16, 16), windows_per_chunk=2)  # 6 windows, 3 chunks
    chunked_bytes, out = _saved_bytes(slide, images)
    out.sum().backward()
    assert counting.largest == 2 * images.shape[0] and counting.calls == 6  # 3 forwards, 3 recomputed
    # Kept for the backward: the crops (as many values as the image) and the logit sums, not activations.
    assert chunked_bytes <= 4 * images.numel() * images.element_size()
    # The same windows run without checkpoints keep every window's activations: many times more.
    everything_bytes, _ = _saved_bytes(lambda x: _reference_slide(unet, x, (16, 16), (16, 16)), images)
    assert chunked_bytes * 4 < everything_bytes


def test_pgd_through_slide_perturbs_the_whole_image_within_budget(unet):
    images, labels = _images().float(), torch.randint(0, CLASSES, (2, 32, 48), generator=torch.Generator())
    model = SlidingWindow(unet.float(), (16, 32), (8, 16), windows_per_chunk=3)
    try:
        adv = create_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=2, random_start=False)(model, images, labels)
    finally:
        unet.double()
    delta = (adv - images).abs()
    assert float(delta.max()) <= 8 / 255 + 1e-6 and (delta.sum(1) > 0).float().mean() > 0.99


@pytest.mark.parametrize("config, match", [
    ({"mode": "tiles"}, r"inference.mode: 'tiles'"),
    ({"mode": "slide", "crop": [512, 512]}, "needs crop and stride"),
    ({"mode": "slide", "crop": [512, 0], "stride": [341, 341]}, r"inference.crop: \[512, 0\]"),
    ({"mode": "slide", "crop": [512, 512], "stride": [600, 341]}, r"stride: \[600, 341\] is larger than the crop"),
    ({"mode": "slide", "crop": [8, 8], "stride": [8, 8], "windows_per_chunk": 0}, "windows_per_chunk: 0"),
    ({"mode": "whole", "crops": [8, 8]}, r"unknown keys \['crops'\]"),
])
def test_bad_inference_config_is_named(config, match):
    with pytest.raises(ValueError, match=match):
        inference_spec(config)
