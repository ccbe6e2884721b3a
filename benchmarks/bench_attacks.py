"""Benchmark of the attack suite: the cost of one attack step against one forward+backward pass of the model.

Every gradient attack pays at least one forward pass and one backward pass to
the input per step (the "floor"). This script measures, in one run and side
by side, the floor and one step of each attack on the same model and batch,
and prints the ratios:

* ``step / floor`` for every attack, goal <= 1.10: FGSM, PGD, SegPGD, CosPGD,
  EroSeg, APGD with each of its losses (``apgd:<loss>``) and SEA (one step
  of one component);
* ``EroSeg step / PGD step``, goal <= 1.05 on CUDA (stated at 512x512, batch
  8) and <= 1.10 on CPU (stated at the default 64x64, batch 8).

Method: a step is ``(time of an attack with k + 1 steps - time of the same
attack with 1 step) / k``, so the once-per-call costs (checks, random start,
final clamp) are not counted per step; the floor is ``k`` forward+backward
passes (``torch.autograd.grad`` of the mean cross-entropy with respect to a
perturbation, like an attack step), timed the same way: ``(k + 1 passes - 1
pass) / k``. APGD's short run has 1 iteration (2 forward passes, 1
backward), so the difference is again ``k`` forward+backward passes. SEA's
runs have ``4`` and ``k + 4`` iterations per component (so that both have
all three radius parts, each with its own start evaluation) and its step is
``(time(k + 4) - time(4)) / (k * components)``. FGSM, a whole one-step call, is compared with one
forward+backward pass timed alone. Each round times the
floor and every attack once, in a rotated order so that no attack always runs
right after another; the per-round values are paired (ratios within a round)
and the medians over rounds are reported. CUDA is synchronised around every
timed call. FGSM is a whole one-step attack and is timed as such.

Examples::

    python benchmarks/bench_attacks.py --device cpu --height 64 --width 64 --batch 8
    python benchmarks/bench_attacks.py --device cuda --height 512 --width 512 --batch 8
    python benchmarks/bench_attacks.py --arch tiny   # without segmentation_models_pytorch
    python benchmarks/bench_attacks.py --attacks pgd,apgd:ce,sea --threads 1   # a subset
    python benchmarks/bench_attacks.py --device cuda --arch DeepLabV3 --encoder resnet50 --classes 21 \\
        --height 384 --width 512 --batch 1 --amp   # one whole VOC-sized image, as evaluation runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from eroseg.attacks import LOSSES, SEA_LOSSES, create_attack
from eroseg.conventions import IGNORE_INDEX, autocast

NAMES = ["fgsm", "pgd", "segpgd", "cospgd", "eroseg", *(f"apgd:{loss}" for loss in LOSSES), "sea"]


class Normalised(nn.Module):
    """Wraps a network that expects ImageNet-standardised input so that it takes images in [0, 1]."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def build_model(arch: str, encoder: str, classes: int) -> nn.Module:
    """``tiny``: three convolutions; any other name: that segmentation_models_pytorch architecture
    (``unet``, ``DeepLabV3``, ``DeepLabV3Plus``, ``PSPNet``, ...) with a random-init encoder."""
    if arch == "tiny":
        net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, classes, 1))
    else:
        import segmentation_models_pytorch as smp

        net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=classes)
    return Normalised(net)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def floor_passes(model, x, y, k: int, amp: bool) -> None:
    """``k`` forward+backward passes to the input: what any gradient attack pays per step."""
    for _ in range(k):
        delta = torch.zeros_like(x, requires_grad=True)
        with autocast(x.device, amp):
            logits = model(x + delta)
        loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)
        torch.autograd.grad(loss, delta)


def breakdown(model, x, y, device, repeats: int) -> dict[str, float]:
    """Time each attack's per-step weight computation alone (ms), EroSeg's parts too, on one batch's logits."""
    from eroseg.attacks.core import class_map
    from eroseg.attacks.cospgd import cospgd_weights
    from eroseg.attacks.eroseg import eroseg_masks, erosion_front, masked_quantile, true_class_log_odds
    from eroseg.attacks.segpgd import segpgd_weights

    with torch.no_grad():
        logits = model(x).float()
        valid = y != IGNORE_INDEX
        y0 = torch.where(valid, y, torch.zeros_like(y))
        correct = valid & (class_map(logits) == y)
        score = true_class_log_odds(logits, y0)
        parts = {
            "segpgd weights": lambda: segpgd_weights(3, 10, logits, y, valid),
            "cospgd weights": lambda: cospgd_weights(3, 10, logits, y, valid),
            "eroseg weights": lambda: eroseg_masks(logits, y, valid, q=0.5),
            "  class map": lambda: class_map(logits),
            "  log-odds": lambda: true_class_log_odds(logits, y0),
            "  quantile": lambda: masked_quantile(score, correct, 0.5),
            "  front": lambda: erosion_front(valid & ~correct, correct, 3),
        }
        out = {}
        for name, fn in parts.items():
            fn()
            out[name] = statistics.median(timed(lambda fn=fn: [fn() for _ in range(10)], device) / 10
                                          for _ in range(repeats))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", "--model", dest="arch", default="unet",
                   help="an smp architecture (unet, DeepLabV3, ...; H, W must suit it, e.g. divisible by 32 "
                        "for unet) or tiny: a 3-layer CNN")
    p.add_argument("--encoder", default="resnet18", help="smp encoder of the architecture")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="k: extra steps of the long run of each attack")
    p.add_argument("--repeats", type=int, default=10, help="rounds; medians are taken over them")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--amp", action="store_true", help="bf16 autocast of the forward passes (CUDA only)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--breakdown", action="store_true", help="also time each weight computation alone")
    p.add_argument("--attacks", default=",".join(NAMES),
                   help="comma-separated subset of: " + ", ".join(NAMES) + " (default: all)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.arch == "unet" and (args.height % 32 or args.width % 32):
        p.error(f"--arch unet needs --height and --width divisible by 32, got {args.height}x{args.width}")
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be >= 1")
    names = [n for n in args.attacks.split(",") if n]
    bad = [n for n in names if n not in NAMES]
    if bad or not names:
        p.error(f"--attacks: unknown {bad}; valid: {', '.join(NAMES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = args.amp and device.type == "cuda"

    torch.manual_seed(0)
    model = build_model(args.arch, args.encoder, args.classes).to(device).eval()
    x = torch.rand(args.batch, 3, args.height, args.width, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    # A random-init model predicts few classes: label about half the pixels with its own prediction so
    # that there are both correct and fooled pixels (EroSeg's selection and front both have work), and
    # make 5% of the pixels void.
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.randint(0, args.classes, pred.shape, device=device)
    r = torch.rand(pred.shape, device=device)
    y = torch.where(r < 0.5, pred, y)
    y = torch.where(r > 0.95, torch.full_like(y, 255), y)

    k = args.steps
    common = dict(eps=8 / 255, amp=amp)
    runs, per_call = {}, {}  # name -> (short run, long run); steps of the long run minus the short one
    for n in names:
        per_call[n] = k
        if n == "fgsm":
            runs[n] = (create_attack("fgsm", **common), None)
        elif n.startswith("apgd:"):
            loss = n.split(":", 1)[1]
            runs[n] = (create_attack("apgd", loss=loss, steps=1, **common),
                       create_attack("apgd", loss=loss, steps=k + 1, **common))
        elif n == "sea":
            runs[n] = (create_attack("sea", steps=4, **common), create_attack("sea", steps=k + 4, **common))
            per_call[n] = k * len(SEA_LOSSES)
        else:
            runs[n] = (create_attack(n, step_size=2 / 255, steps=1, **common),
                       create_attack(n, step_size=2 / 255, steps=k + 1, **common))
    gens = lambda: torch.Generator(device=device).manual_seed(0)  # noqa: E731

    jobs = {"floor:1": lambda: floor_passes(model, x, y, 1, amp),
            "floor:k": lambda: floor_passes(model, x, y, k + 1, amp)}
    for n, (one, many) in runs.items():
        jobs[f"{n}:1"] = lambda a=one: a(model, x, y, generator=gens())
        if many is not None:
            jobs[f"{n}:k"] = lambda a=many: a(model, x, y, generator=gens())
    for fn in jobs.values():  # warm-up (allocator, cuDNN, lazy init)
        fn()
    order = list(jobs)
    rounds = []
    for i in range(args.repeats):
        rot = order[i % len(order):] + order[:i % len(order)]
        rounds.append({name: timed(jobs[name], device) for name in rot})

    def per_round(n: str, rt: dict) -> float:
        if n == "floor":
            return (rt["floor:k"] - rt["floor:1"]) / k
        return rt["fgsm:1"] if n == "fgsm" else (rt[f"{n}:k"] - rt[f"{n}:1"]) / per_call[n]

    def floor_of(n: str, rt: dict) -> float:
        # FGSM is a whole call: compare it with one forward+backward timed alone, which pays the same
        # start-up latency (on CUDA the CPU cannot run ahead of an isolated pass).
        return rt["floor:1"] if n == "fgsm" else per_round("floor", rt)

    floor = statistics.median(per_round("floor", rt) for rt in rounds)
    floor1 = statistics.median(rt["floor:1"] for rt in rounds)
    step = {n: statistics.median(per_round(n, rt) for rt in rounds) for n in names}
    ratio = {n: statistics.median(per_round(n, rt) / floor_of(n, rt) for rt in rounds) for n in names}
    ero_pgd = (statistics.median(per_round("eroseg", rt) / per_round("pgd", rt) for rt in rounds)
               if {"eroseg", "pgd"} <= set(names) else None)
    goal_ero = 1.05 if device.type == "cuda" else 1.10

    model_name = "tiny CNN" if args.arch == "tiny" else f"{args.arch}/{args.encoder}"
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{model_name}, {args.classes} classes, batch {args.batch}, {args.height}x{args.width}, amp={amp}, "
          f"channels_last={args.channels_last}, threads={torch.get_num_threads()}, k={k}, rounds={args.repeats}")
    print(f"floor (one forward + backward to the input): {floor * 1e3:.2f} ms within a run, "
          f"{floor1 * 1e3:.2f} ms alone (the floor of the whole FGSM call)")
    print(f"{'attack':<22} {'step ms':>9} {'step/floor':>11}  goal <= 1.10")
    ok = True
    for n in names:
        flag = "ok" if ratio[n] <= 1.10 else "OVER"
        ok &= ratio[n] <= 1.10
        label = {"fgsm": "fgsm (whole)", "sea": "sea (1 comp.)"}.get(n, n)
        print(f"{label:<22} {step[n] * 1e3:9.2f} {ratio[n]:11.3f}  {flag}")
    if ero_pgd is not None:
        flag = "ok" if ero_pgd <= goal_ero else "OVER"
        ok &= ero_pgd <= goal_ero
        print(f"EroSeg step / PGD step = {ero_pgd:.3f} (goal <= {goal_ero:.2f}) {flag}")
    parts = breakdown(model, x, y, device, args.repeats) if args.breakdown else {}
    for name, t in parts.items():
        print(f"{name:<16} {t * 1e3:8.3f} ms  ({t / floor * 100:.1f}% of the floor)")
    out = {"device": str(device), "arch": args.arch, "encoder": args.encoder, "batch": args.batch,
           "height": args.height, "width": args.width, "amp": amp, "floor_ms": floor * 1e3,
           "floor_alone_ms": floor1 * 1e3,
           "step_ms": {n: s * 1e3 for n, s in step.items()}, "step_over_floor": ratio,
           "eroseg_over_pgd": ero_pgd, "goals_met": ok,
           "breakdown_ms": {name.strip(): t * 1e3 for name, t in parts.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["goals_met"] else 1)
