"""Benchmark: cost of an adversarial-training step against a standard one, and bf16 against fp32.

Prints ratios measured side by side in one run (interleaved repeats, medians),
not absolute times from separate runs:

- ``AT step / standard step`` for each training attack with K steps and
  ``adv_fraction`` 1.0, against the ideal K + 1 (K attack forward+backward
  passes plus the update's); goal: within 1.15x of K + 1.
- on CUDA, ``bf16 / fp32`` training throughput (images/s) with channels_last;
  goal: at least 1.5x for a ResNet-50 DeepLabV3+ at 512x512.

Examples::

    python benchmarks/bench_train.py --device cpu --height 64 --width 64 --batch 16
    python benchmarks/bench_train.py --device cuda --arch DeepLabV3Plus --encoder resnet50 \\
        --height 512 --width 512 --batch 8 --precision
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from eroseg.attacks import create_attack
from eroseg.models import create_model
from eroseg.training import AdversarialTraining


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(task, opt, images, labels, repeats, device):
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        res = task(images, labels)
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--kwargs", default='{"encoder_depth": 4, "decoder_channels": [128, 64, 32, 16]}')
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="attack steps K")
    p.add_argument("--attacks", nargs="+", default=["pgd", "segpgd", "cospgd", "eroseg"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", action="store_true", help="also compare bf16 with fp32 (CUDA)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the AT ratio (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs (CUDA)")
    args = p.parse_args()
    import json

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    kwargs = json.loads(args.kwargs) if args.kwargs else {}
    model = create_model(args.arch, args.encoder, args.classes, **kwargs).to(device)
    cl = args.channels_last and device.type == "cuda"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images = torch.rand(args.batch, 3, args.height, args.width, device=device)
    if cl:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, args.classes, (args.batch, args.height, args.width), device=device)
    amp = args.amp and device.type == "cuda"

    tasks = {"standard": AdversarialTraining(model, None, amp=amp)}
    for name in args.attacks:
        atk = create_attack(name, eps=8 / 255, step_size=2 / 255, steps=args.steps, amp=amp)
        tasks[name] = AdversarialTraining(model, atk, adv_fraction=1.0, amp=amp)
    for t in tasks.values():  # warm-up
        time_steps(t, opt, images, labels, 1, device)
    samples = {k: [] for k in tasks}
    for _ in range(args.rounds):
        for k, t in tasks.items():
            samples[k] += time_steps(t, opt, images, labels, args.repeats, device)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"device {device}, {args.arch}/{args.encoder}, batch {args.batch}, {args.height}x{args.width}, "
          f"K={args.steps}, adv_fraction=1.0, amp={amp}, channels_last={cl}, threads={torch.get_num_threads()}")
    print(f"{'method':<10} {'step ms':>9} {'ratio':>7} {'ideal':>6} {'ratio/ideal':>12}  (goal <= 1.15)")
    for k, v in med.items():
        r = v / med["standard"]
        ideal = 1 if k == "standard" else args.steps + 1
        print(f"{k:<10} {v * 1e3:9.1f} {r:7.2f} {ideal:6d} {r / ideal:12.3f}")

    if args.precision and device.type == "cuda":
        fp32 = AdversarialTraining(model, None, amp=False)
        bf16 = AdversarialTraining(model, None, amp=True)
        time_steps(fp32, opt, images, labels, 2, device)
        time_steps(bf16, opt, images, labels, 2, device)
        s32, s16 = [], []
        for _ in range(args.rounds):
            s32 += time_steps(fp32, opt, images, labels, args.repeats, device)
            s16 += time_steps(bf16, opt, images, labels, args.repeats, device)
        ips32 = args.batch / statistics.median(s32)
        ips16 = args.batch / statistics.median(s16)
        print(f"training throughput: fp32 {ips32:.1f} img/s, bf16 {ips16:.1f} img/s, "
              f"bf16/fp32 = {ips16 / ips32:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
