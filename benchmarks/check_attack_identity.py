"""Check that APGD (every loss) and SEA give bit-identical adversarial images across two versions of the code.

Run it once on each version with the same output folder argument suffix:

    PYTHONPATH=<checkout A> python benchmarks/check_attack_identity.py save A.pt
    PYTHONPATH=<checkout B> python benchmarks/check_attack_identity.py compare A.pt

It attacks a small random conv net (BatchNorm included) on random images with
void pixels, for every APGD loss (with non-default EroSeg parameters for the
``eroseg`` loss), APGD with the reference rules and the radius schedule, SEA
with and without an EroSeg component, Linf and L2, targeted and not; each run
draws from a fixed generator. ``compare`` fails naming the first run whose
images differ in any bit.
"""

from __future__ import annotations

import inspect
import sys

import torch
import torch.nn as nn

from eroseg.attacks import apgd, sea

LOSS_NAMES = ("ce", "masked_ce", "balanced_ce", "js", "masked_spherical", "spherical", "eroseg")
EROSEG_PARAMS = {"q0": 0.3, "schedule": "linear", "kernel_size": 5, "gamma": 0.25, "front": True, "selection": False}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 4, 3, padding=1))

    def forward(self, x):
        return self.net((x - 0.5) * 8)


def _loss_kwargs(fn, loss_params: dict | None, loss_name: str) -> dict:
    """The EroSeg parameters as the attack takes them: ``loss_params`` (new API) or its own keywords (old)."""
    if not loss_params:
        return {}
    if "loss_params" in inspect.signature(fn).parameters:
        return {"loss_params": {loss_name: loss_params} if fn is sea else loss_params}
    return dict(loss_params)


def runs() -> dict[str, torch.Tensor]:
    model = Net().eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 14, 14, generator=gen)
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[0, :2, :3] = 255
    out = {}
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        for loss in LOSS_NAMES:
            params = EROSEG_PARAMS if loss == "eroseg" else None
            for targeted in (False, True):
                target = (labels + 1) % 4 if targeted else labels
                target = torch.where(labels == 255, labels, target)
                out[f"apgd/{norm}/{loss}/targeted={targeted}"] = apgd(
                    model, images, target, eps=eps, steps=12, norm=norm, loss=loss, targeted=targeted,
                    generator=torch.Generator().manual_seed(7), **_loss_kwargs(apgd, params, loss))
            out[f"apgd/{norm}/{loss}/reference+schedule"] = apgd(
                model, images, labels, eps=eps, steps=12, norm=norm, loss=loss, rules="reference",
                radius_schedule=True, generator=torch.Generator().manual_seed(8), **_loss_kwargs(apgd, params, loss))
        out[f"apgd/{norm}/eroseg/default-params"] = apgd(model, images, labels, eps=eps, steps=12, norm=norm,
                                                         loss="eroseg", generator=torch.Generator().manual_seed(9))
        out[f"apgd/{norm}/masked_ce/track=masked_ce"] = apgd(
            model, images, labels, eps=eps, steps=12, norm=norm, loss="masked_ce", track_loss="masked_ce",
            generator=torch.Generator().manual_seed(10))
        out[f"sea/{norm}"] = sea(model, images, labels, eps=eps, steps=10, norm=norm,
                                 generator=torch.Generator().manual_seed(11))
        out[f"sea/{norm}/+eroseg,ce"] = sea(
            model, images, labels, eps=eps, steps=10, norm=norm, losses=["masked_ce", "eroseg", "ce"],
            rules="reference", generator=torch.Generator().manual_seed(12), **_loss_kwargs(sea, EROSEG_PARAMS,
                                                                                          "eroseg"))
    return out


def main(argv: list[str]) -> int:
    mode, path = argv
    results = runs()
    if mode == "save":
        torch.save(results, path)
        print(f"saved {len(results)} runs to {path}")
        return 0
    saved = torch.load(path)
    if sorted(saved) != sorted(results):
        print(f"different runs: {sorted(set(saved) ^ set(results))}")
        return 1
    for name, adv in results.items():
        if not torch.equal(adv, saved[name]):
            print(f"{name}: differs (max |diff| {(adv - saved[name]).abs().max().item():.3g})")
            return 1
    print(f"all {len(results)} runs bit-identical")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
