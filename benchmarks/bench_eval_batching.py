"""Images per second of an attack evaluation on mixed-size whole images: batch 1 against batches by size.

PASCAL VOC val images come in a handful of exact sizes (500x375 most of all,
then 500x333, 375x500, 500x500, 333x500, ...). ``eroseg.evaluate`` gathers the
images of one exact size from anywhere in the split into batches
(``eroseg.data.batching``), so a batch is full instead of one image. This
script draws image sizes from VOC's common sizes (scaled by ``--scale``, e.g.
0.25 on a CPU), in a shuffled order, and evaluates the same model under the
same 20-step PGD at batch 1 and at ``--batch``, side by side, in one process:

* images/s of each, and their ratio (goal on a GPU at VOC sizes: >= 3x);
* how many images got per-image counts that differ between the two (0 means
  identical results; the attack runs without random start so both runs are
  deterministic; a batched forward pass may round differently on a GPU).

Examples::

    python benchmarks/bench_eval_batching.py                      # CPU, scale 0.25, Unet-resnet18
    python benchmarks/bench_eval_batching.py --device cuda --scale 1 --images 128 --batch 16 \\
        --arch DeepLabV3 --encoder resnet50 --classes 21 --amp
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Common (width, height) of PASCAL VOC 2012 images with rough relative frequencies (most are 500 px on the long side).
VOC_SIZES = [((500, 375), 0.38), ((500, 333), 0.18), ((375, 500), 0.14), ((500, 334), 0.05), ((500, 500), 0.05),
             ((333, 500), 0.05), ((500, 332), 0.04), ((500, 400), 0.04), ((500, 366), 0.04), ((400, 500), 0.03)]


class MixedVOCSizes(torch.utils.data.Dataset):
    """``n`` smooth random images of VOC's sizes (scaled), drawn and shuffled with ``seed``; a few classes each."""

    def __init__(self, n: int, scale: float, classes: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        sizes, p = zip(*VOC_SIZES)
        picks = rng.choice(len(sizes), size=n, p=np.asarray(p) / sum(p))
        self.sizes = [(max(8, round(sizes[k][1] * scale)), max(8, round(sizes[k][0] * scale))) for k in picks]
        self.classes, self.seed = classes, seed

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int):
        h, w = self.sizes[i]
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        coarse = torch.rand(1, 3, max(2, h // 16), max(2, w // 16), generator=g)
        image = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        image = (image + 0.05 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
        label = (image.mean(0) * self.classes).long().clamp(max=self.classes - 1)
        return image, label


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--scale", type=float, default=None, help="image size factor (default 0.25 on CPU, 1 on CUDA)")
    p.add_argument("--images", type=int, default=None, help="images evaluated (default 24 on CPU, 128 on CUDA)")
    p.add_argument("--batch", type=int, default=8, help="batch size of the batched run")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    scale = args.scale if args.scale is not None else (1.0 if cuda else 0.25)
    n = args.images if args.images is not None else (128 if cuda else 24)

    from eroseg.attacks import create_attack
    from eroseg.data.batching import sample_size, size_batches
    from eroseg.evaluate import evaluate
    from eroseg.models import create_model

    torch.manual_seed(args.seed)
    model = create_model(args.arch, args.encoder, args.classes).to(args.device).eval()
    data = MixedVOCSizes(n, scale, args.classes, args.seed)
    sizes = [sample_size(data, i) for i in range(len(data))]
    batches = size_batches(sizes, args.batch)
    attack = create_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=args.steps, random_start=False, amp=args.amp)

    def run(batch_size: int) -> dict:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = evaluate(model, data, args.classes, attack=attack, batch_size=batch_size, device=args.device,
                       amp=args.amp, num_workers=0)
        if cuda:
            torch.cuda.synchronize()
        res["wall"] = time.perf_counter() - t0
        return res

    # Warm-up (allocator, cuDNN autotune, one-off imports) on a few images of each kind of batch.
    evaluate(model, torch.utils.data.Subset(data, batches[0][:2]), args.classes, attack=attack, batch_size=2,
             device=args.device, amp=args.amp)
    one = run(1)
    many = run(args.batch)
    differ = sum(
        not all(np.array_equal(getattr(one["per_image"], k)[i], getattr(many["per_image"], k)[i])
                for k in ("tp", "pred", "label"))
        for i in range(n)
    )
    distinct = len(set(sizes))
    print(f"{n} images, {distinct} distinct sizes (scale {scale}: e.g. {sizes[0][1]}x{sizes[0][0]}), "
          f"PGD-{args.steps}, {args.arch}-{args.encoder}, {args.classes} classes, device {args.device}"
          f"{', bf16' if args.amp else ''}, torch threads {torch.get_num_threads()}")
    print(f"{'run':<24} {'batches':>8} {'seconds':>9} {'images/s':>9}")
    for name, res, nb in (("batch 1", one, n), (f"batch {args.batch} by size", many, len(batches))):
        print(f"{name:<24} {nb:>8} {res['wall']:9.2f} {n / res['wall']:9.2f}")
    print(f"speed-up {one['wall'] / many['wall']:.2f}x; images with different per-image counts: {differ} of {n}; "
          f"mIoU {one['metrics']['miou']:.4f} vs {many['metrics']['miou']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
