"""Benchmark: one attack step of each attack against the floor (one forward+backward pass).

Any gradient attack pays at least one forward and one backward pass (to the
input) per step; this script measures, side by side in one run (interleaved
rounds, medians, CUDA synchronised), the time of one step of each attack and
of that floor on the same model and batch, and prints the ratios:

- ``step / floor`` for every attack; goal <= 1.10;
- ``EroSeg step / PGD step``; goal <= 1.05 on CUDA at 512x512 batch 8,
  <= 1.10 on CPU at the embedded default size (64x64).

A step is timed as (time of an attack with ``steps + 1`` steps minus one with
1 step) / ``steps``, so set-up costs (random start, projection of the start,
parameter freezing) are not counted in the per-step figure.

Examples::

    python benchmarks/bench_attacks.py --device cpu --height 64 --width 64 --batch 8
    python benchmarks/bench_attacks.py --device cuda --height 512 --width 512 --batch 8 --amp
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from eroseg.attacks import create_attack
from eroseg.models import create_model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_pass(model, x, y, amp):
    """One forward + backward to the input: what every gradient attack step needs."""
    delta = torch.zeros_like(x, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and x.is_cuda):
        logits = model(x + delta)
    loss = F.cross_entropy(logits.float(), y, ignore_index=255)
    (g,) = torch.autograd.grad(loss, delta)
    return g


def timed(fn, device, repeats):
    out = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--kwargs", default='{"encoder_depth": 4, "decoder_channels": [128, 64, 32, 16]}')
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="steps of the timed attacks")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.arch, args.encoder, args.classes, **json.loads(args.kwargs or "{}")).to(device).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    x = torch.rand(args.batch, 3, args.height, args.width, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch, args.height, args.width), device=device)
    # A model at random init predicts few classes; make about half the pixels "correct" so that
    # EroSeg's selection and front both have work to do.
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.where(torch.rand(y.shape, device=device) < 0.5, pred, y)
    amp = args.amp and device.type == "cuda"

    names = ["fgsm", "pgd", "segpgd", "cospgd", "eroseg"]
    runs = {}
    for n in names:
        if n == "fgsm":
            one = create_attack("fgsm", eps=8 / 255, amp=amp)
            runs[n] = (lambda a=one: a(model, x, y), None)
        else:
            one = create_attack(n, eps=8 / 255, step_size=2 / 255, steps=1, amp=amp)
            many = create_attack(n, eps=8 / 255, step_size=2 / 255, steps=args.steps + 1, amp=amp)
            runs[n] = (lambda a=one: a(model, x, y), lambda a=many: a(model, x, y))
    floor = lambda: floor_pass(model, x, y, amp)  # noqa: E731
    for fn1, fnk in runs.values():  # warm-up
        fn1()
        fnk and fnk()
    floor()
    t_floor, t_one, t_many = [], {n: [] for n in names}, {n: [] for n in names}
    for _ in range(args.rounds):
        t_floor += timed(floor, device, args.repeats)
        for n, (fn1, fnk) in runs.items():
            t_one[n] += timed(fn1, device, args.repeats)
            if fnk is not None:
                t_many[n] += timed(fnk, device, args.repeats)
    f = statistics.median(t_floor)
    step = {}
    for n in names:
        if n == "fgsm":
            step[n] = statistics.median(t_one[n])  # the whole single-step attack
        else:
            step[n] = (statistics.median(t_many[n]) - statistics.median(t_one[n])) / args.steps
    print(f"device {device}, {args.arch}/{args.encoder}, batch {args.batch}, {args.height}x{args.width}, "
          f"amp={amp}, channels_last={args.channels_last}, threads={torch.get_num_threads()}")
    print(f"floor (forward+backward to the input): {f * 1e3:.2f} ms")
    print(f"{'attack':<8} {'step ms':>9} {'step/floor':>11}  goal <= 1.10")
    for n in names:
        label = f"{n} (whole)" if n == "fgsm" else n
        print(f"{label:<8} {step[n] * 1e3:9.2f} {step[n] / f:11.3f}")
    goal = 1.05 if device.type == "cuda" else 1.10
    print(f"EroSeg step / PGD step = {step['eroseg'] / step['pgd']:.3f} (goal <= {goal:.2f})")


if __name__ == "__main__":
    main()
