"""SEA with this package's rules against SEA with its reference code's rules, on small random models.

For each of six small random conv nets (seeds 0-5; labels: the clean
prediction, one void row per image) it runs SEA (four losses, radius
schedule, random start from the same generator seed for every variant) and
prints the worst-case mIoU (%) of SEA's per-image choice for each variant:

* ``reference``: ``rules="reference"`` (the reference code, iterate for
  iterate; ``tests/test_sea_reference.py``);
* ``default``: the package's default rules;
* ``ref+<switch>``: the reference with one :class:`eroseg.attacks.apgd.ApgdRules`
  field set to the default's value (the measured effect of that difference);
* ``track=loss``: the default, each component tracking its own attack loss;
* ``before``: only with ``--before-code DIR``: ``DIR`` is put first on
  ``sys.path`` and SEA is called with the parameters every version has
  (e.g. an export of an earlier commit: ``git archive <commit> eroseg | tar -x -C DIR``).

It also counts the iterations the early stop saves (default rules). Lower
mIoU is a stronger attack; "default - reference" must be <= 0 on every model.

Examples::

    python benchmarks/bench_sea_reference.py --steps 10 --threads 1
    python benchmarks/bench_sea_reference.py --steps 100 --variants reference,default
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="iterations per SEA component (the config default: 10)")
    ap.add_argument("--eps", type=float, default=2 / 255)
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--variants", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--before-code", default=None, help="a directory holding an earlier eroseg/ (variant 'before')")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.before_code:
        sys.path.insert(0, args.before_code)
    import torch
    import torch.nn as nn

    from eroseg.attacks import sea
    torch.set_num_threads(args.threads)
    before = args.before_code is not None
    variants: dict[str, dict] = {}
    if before:
        variants["before"] = {}
    else:
        from eroseg.attacks.apgd import REFERENCE_RULES, ApgdRules
        default = ApgdRules()
        variants["reference"] = {"rules": REFERENCE_RULES}
        variants["default"] = {"rules": default}
        for f in dataclasses.fields(ApgdRules):
            if getattr(default, f.name) != getattr(REFERENCE_RULES, f.name):
                variants[f"ref+{f.name}"] = {"rules": dataclasses.replace(REFERENCE_RULES,
                                                                           **{f.name: getattr(default, f.name)})}
        variants["track=loss"] = {"rules": default, "track": True}
        variants["default no early stop"] = {"rules": dataclasses.replace(default, early_stop="off"),
                                              "count": True}
        variants["default (count)"] = {"rules": default, "count": True}
        keep = dataclasses.replace(default, best_keeps_earlier=True)
        variants["keep earlier no early stop"] = {"rules": dataclasses.replace(keep, early_stop="off"), "count": True}
        variants["keep earlier stop at 0"] = {"rules": dataclasses.replace(keep, early_stop="pixel_acc"),
                                                         "count": True}
    if args.variants:
        keep = args.variants.split(",")
        variants = {k: v for k, v in variants.items() if k in keep}
    n_cls = 5

    class Net(nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                     nn.ReLU(), nn.Conv2d(16, n_cls, 1))
            self.eval()

        def forward(self, x):
            return self.net((x - 0.5) * 8)

    def miou(model, adv, y):
        with torch.no_grad():
            pred = model(adv).argmax(1)
        v = y != 255
        cm = torch.bincount(y[v] * n_cls + pred[v], minlength=n_cls * n_cls).view(n_cls, n_cls).double()
        inter, union = cm.diag(), cm.sum(0) + cm.sum(1) - cm.diag()
        return (inter[union > 0] / union[union > 0]).mean().item() * 100

    seeds = [int(s) for s in args.seeds.split(",")]
    table: dict[str, list[float]] = {k: [] for k in variants}
    iterations: dict[str, list[int]] = {}
    for seed in seeds:
        model = Net(seed)
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.nn.functional.avg_pool2d(torch.rand(args.batch, 3, args.size + 2, args.size + 2, generator=g),
                                           3, 1)  # smooth images
        with torch.no_grad():
            y = model(x).argmax(1)
        y[:, 0, :] = 255
        for name, v in variants.items():
            kw = {"rules": v["rules"]} if "rules" in v else {}
            calls = []
            cb = calls.append if v.get("count") else None
            if v.get("track"):  # every component tracks its own attack loss
                losses = sys.modules["eroseg.attacks.losses"].LOSSES
                saved = dict(losses)
                losses.update({k: dataclasses.replace(spec, track=k) for k, spec in saved.items()})
            try:
                adv = sea(model, x, y, eps=args.eps, steps=args.steps, generator=torch.Generator().manual_seed(seed),
                          callback=cb, **kw)
            finally:
                if v.get("track"):
                    losses.update(saved)
            table[name].append(miou(model, adv, y))
            if v.get("count"):
                iterations.setdefault(name, []).append(len(calls))
    print(f"SEA worst-case mIoU (%), {args.steps} iterations per loss, eps {args.eps * 255:.1f}/255, "
          f"{args.batch} images {args.size}x{args.size}, seeds {seeds}")
    print(f"{'variant':34s}" + "".join(f"{s:>8d}" for s in seeds) + f"{'mean':>8s}")
    for name, vals in table.items():
        print(f"{name:34s}" + "".join(f"{v:8.2f}" for v in vals) + f"{sum(vals) / len(vals):8.2f}")
    if "reference" in table:
        for name in table:
            if name != "reference":
                d = [a - b for a, b in zip(table[name], table["reference"])]
                print(f"{name + ' - reference':34s}" + "".join(f"{v:8.2f}" for v in d) + f"{sum(d) / len(d):8.2f}")
    names = list(iterations)
    for full, stop in zip(names[::2], names[1::2]):
        a, b = sum(iterations[full]), sum(iterations[stop])
        print(f"evaluated iterates (4 components, all models): {full}: {a}; {stop}: {b} "
              f"({100 * (1 - b / a):.1f} % saved); per model {iterations[stop]} of {iterations[full]}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
