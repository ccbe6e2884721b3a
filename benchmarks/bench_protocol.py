"""Benchmark: cost of the real-dataset protocols (config/voc.yaml, config/cityscapes.yaml) on one GPU.

Measures, for a ResNet-50 model of the protocol (DeepLabV3 or PSPNet), with
random weights and random inputs of the protocol's sizes (the cost does not
depend on the values):

- one training step at the training crop and batch, standard and adversarial
  (EroSeg, K attack steps, ``adv_fraction`` 0.5), bf16 autocast as configured;
- one 100-step attack (PGD and EroSeg) on one whole evaluation image.

and prints those times with the per-epoch and per-stage estimates they imply
(steps per epoch x step time; images x attack time). The printed estimates
are extrapolations from these timings, not runs of the full protocol.

Example::

    python benchmarks/bench_protocol.py --arch DeepLabV3 --classes 21 --crop 512 512 --batch 16 \\
        --eval-size 384 512 --train-images 10582 --val-images 1449
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from eroseg.attacks import create_attack
from eroseg.models import create_model
from eroseg.training import AdversarialTraining


def _timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="DeepLabV3")
    p.add_argument("--encoder", default="resnet50")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--crop", type=int, nargs=2, default=[512, 512], help="training crop H W")
    p.add_argument("--batch", type=int, default=16, help="training batch (one GPU)")
    p.add_argument("--at-steps", type=int, default=3, help="attack steps K of adversarial training")
    p.add_argument("--eval-size", type=int, nargs=2, default=[384, 512], help="whole evaluation image H W")
    p.add_argument("--eval-batch", type=int, default=1)
    p.add_argument("--eval-steps", type=int, default=100)
    p.add_argument("--train-images", type=int, default=10582, help="training images per epoch (estimate)")
    p.add_argument("--val-images", type=int, default=1449, help="evaluation images (estimate)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-amp", action="store_true")
    args = p.parse_args()

    device = torch.device(args.device)
    amp = not args.no_amp and device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = create_model(args.arch, args.encoder, args.classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    h, w = args.crop
    batch = {"images": torch.rand(args.batch, 3, h, w, device=device),
             "labels": torch.randint(0, args.classes, (args.batch, h, w), device=device)}
    at_attack = create_attack("eroseg", eps=8 / 255, step_size=2 / 255, steps=args.at_steps, amp=amp)
    tasks = {"standard": AdversarialTraining(model, None, amp=amp),
             f"eroseg_at (K={args.at_steps})": AdversarialTraining(model, at_attack, adv_fraction=0.5, amp=amp)}

    def train_step(task):
        res = task(batch["images"], batch["labels"])
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        opt.step()

    train_ms = {}
    for name, task in tasks.items():
        train_step(task)  # warm-up (cudnn autotuning)
        train_ms[name] = _timed(lambda task=task: train_step(task), device, args.repeats)
    batch.clear()  # free the training batch before the evaluation part

    eh, ew = args.eval_size
    x = torch.rand(args.eval_batch, 3, eh, ew, device=device)
    y = torch.randint(0, args.classes, (args.eval_batch, eh, ew), device=device)
    model.eval()
    attack_s = {}
    for name in ("pgd", "eroseg"):
        atk = create_attack(name, eps=8 / 255, step_size=2 / 255, steps=args.eval_steps, amp=amp)
        create_attack(name, eps=8 / 255, step_size=2 / 255, steps=2, amp=amp)(model, x, y)  # warm-up
        attack_s[name] = _timed(lambda atk=atk: atk(model, x, y), device, max(1, args.repeats // 2))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    steps_per_epoch = args.train_images // args.batch
    print(f"{name}; {args.arch}/{args.encoder}, {args.classes} classes, bf16 autocast {amp}")
    print(f"training, crop {h}x{w}, batch {args.batch}, {steps_per_epoch} steps per epoch "
          f"({args.train_images} images):")
    for k, v in train_ms.items():
        print(f"  {k:<18} {v * 1e3:8.1f} ms/step   epoch ~{v * steps_per_epoch / 60:6.1f} min")
    print(f"evaluation, whole image {eh}x{ew}, batch {args.eval_batch}, {args.eval_steps} steps:")
    for k, v in attack_s.items():
        per_image = v / args.eval_batch
        print(f"  {k:<18} {v:8.2f} s/attack   {args.val_images} images ~{per_image * args.val_images / 3600:5.2f} "
              f"GPU-h per attack setting")


if __name__ == "__main__":
    main()
