"""Tables from evaluation JSON files: CSV for machines, Markdown for people.

Aggregation never loads a model or attacks anything: the worst case over
attacks is recomputed from the per-image counts that every evaluation keeps.

Tables (each written as ``<name>.csv`` and ``<name>.md``):

- ``results``: one row per evaluation (long form, every number the tables use).
- ``main``: methods x attacks at the headline eps and steps, clean first and
  the worst case over attacks last, mean ± std of mIoU over seeds.
- ``steps``: attack strength versus steps (rows attack and eps, columns steps);
  ``eps``: versus eps (rows attack and steps, columns eps). Each eps (steps)
  evaluated at two or more step counts (eps values) gets its rows.
- ``ablation``: the EroSeg ablation.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from eroseg.io import atomic_write_text, read_json
from eroseg.metrics import PerImageStats, worst_case_stats

log = logging.getLogger(__name__)

WORST = "worst_case"


def load_evals(paths: list[str]) -> tuple[pd.DataFrame, dict]:
    """Read evaluation JSON files into a long table and a map key -> per-image stats."""
    rows, stats = [], {}
    for p in paths:
        d = read_json(p)
        for key in ("method", "seed", "attack_name", "miou", "pixel_acc", "per_image"):
            if key not in d:
                raise ValueError(f"{p}: evaluation JSON lacks key {key!r}")
        params = d.get("attack_params") or {}
        row = {
            "method": d["method"],
            "seed": int(d["seed"]),
            "attack": d["attack_name"],
            "eps": params.get("eps", 0.0),
            "eps_255": round(params.get("eps", 0.0) * 255, 3),
            "steps": int(params.get("steps", 0)) if d["attack_name"] != "clean" else 0,
            "miou": d["miou"],
            "pixel_acc": d["pixel_acc"],
            "num_images": d.get("num_images"),
            "seconds": d.get("seconds"),
            "file": str(p),
        }
        rows.append(row)
        stats[(row["method"], row["seed"], row["attack"], row["eps_255"], row["steps"])] = PerImageStats.from_dict(
            d["per_image"]
        )
    df = pd.DataFrame(rows)
    return df, stats


def _fmt(values: pd.Series) -> str:
    v = values.dropna().to_numpy(dtype=float) * 100
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def _write(df: pd.DataFrame, out_dir: Path, name: str, title: str, index: bool = True) -> None:
    if index and isinstance(df.index, pd.MultiIndex):  # one column per level, not tuples
        df, index = df.reset_index(), False
    atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=index))
    atomic_write_text(out_dir / f"{name}.md", f"## {title}\n\n{df.to_markdown(index=index)}\n")


def worst_case_rows(
    df: pd.DataFrame, stats: dict, attacks: list[str], eps_255: float, steps: int, single_step=()
) -> pd.DataFrame:
    """Worst case over ``attacks`` at one (eps, steps), per (method, seed).

    Attacks in ``single_step`` (FGSM) enter with their one step.
    """
    rows = []
    for (method, seed), _ in df.groupby(["method", "seed"]):
        per = {}
        for a in attacks:
            key = (method, seed, a, round(eps_255, 3), 1 if a in single_step else steps)
            if key in stats:
                per[a] = stats[key]
        if not per:
            continue
        missing = sorted(set(attacks) - set(per))
        if missing:
            raise ValueError(f"worst case for {method} seed {seed}: no evaluation of {missing} at eps {eps_255}/255, steps {steps}")
        chosen, names = worst_case_stats(per)
        s = chosen.scores()
        counts = pd.Series(names).value_counts().to_dict()
        rows.append({"method": method, "seed": seed, "attack": WORST, "eps_255": round(eps_255, 3), "steps": steps,
                     "miou": s["miou"], "pixel_acc": s["pixel_acc"], "chosen": counts})
    return pd.DataFrame(rows)


def aggregate(eval_paths: list[str], spec: dict, out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Build every table from ``eval_paths`` as ``spec`` describes; returns the tables.

    Args:
        eval_paths: evaluation JSON files.
        spec: ``methods`` (row order), ``headline`` ``{eps, steps}`` (eps in
            pixel units), ``attacks`` (main-table column order), ``worst_case``
            (attacks it ranges over), optional ``sweep`` ``{method, attacks,
            eps: [...], steps: [...], eps_fixed, steps_fixed}`` and
            ``ablation`` ``{method, attacks: {label: attack_name}}``.
        out_dir: where tables go.
    """
    out_dir = Path(out_dir)
    df, stats = load_evals(eval_paths)
    tables: dict[str, pd.DataFrame] = {}
    methods = spec.get("methods") or sorted(df["method"].unique())
    head = spec.get("headline", {})
    h_eps = round(float(head.get("eps", 8 / 255)) * 255, 3)
    h_steps = int(head.get("steps", 20))
    attacks = spec.get("attacks") or sorted(set(df["attack"]) - {"clean"})
    wc_attacks = spec.get("worst_case") or attacks

    single = set(spec.get("single_step", ()))
    wc = worst_case_rows(df, stats, wc_attacks, h_eps, h_steps, single)
    long = pd.concat([df, wc.drop(columns=["chosen"])], ignore_index=True) if len(wc) else df
    tables["results"] = long.drop(columns=["file"], errors="ignore")
    _write(tables["results"], out_dir, "results", "Every evaluation", index=False)

    # Main table: methods x (clean, attacks..., worst case) at the headline setting.
    cols = ["clean", *attacks, WORST]
    main = pd.DataFrame(index=pd.Index(methods, name="method"), columns=cols, dtype=object)
    main_num = pd.DataFrame(index=main.index, columns=cols, dtype=float)
    for m in methods:
        for c in cols:
            if c == "clean":
                sel = long[(long.method == m) & (long.attack == "clean")]
            else:
                st = 1 if c in single else h_steps
                sel = long[(long.method == m) & (long.attack == c) & (long.eps_255 == h_eps) & (long.steps == st)]
            main.loc[m, c] = _fmt(sel["miou"])
            main_num.loc[m, c] = sel["miou"].mean() if len(sel) else math.nan
    main.columns = [f"{c}" for c in cols]
    tables["main"] = main
    tables["main_values"] = main_num
    n_seeds = sorted(set(df.groupby("method")["seed"].nunique()))
    seeds = "/".join(str(n) for n in n_seeds)
    _write(main, out_dir, "main",
           f"mIoU (%) under attack, eps {h_eps:g}/255, {h_steps} steps (FGSM: 1 step); "
           f"mean ± std over {seeds} seed(s)")
    atomic_write_text(out_dir / "main_values.csv", main_num.to_csv())

    sweep = spec.get("sweep")
    if sweep:
        sm = sweep["method"]
        sa = sweep.get("attacks") or attacks
        base = long[(long.method == sm) & (long.attack.isin(sa))]
        e_fixed = round(float(sweep["eps_fixed"]) * 255, 3)
        s_fixed = int(sweep["steps_fixed"])
        order = {a: i for i, a in enumerate(sa)}
        # One row per attack and eps, for each eps evaluated at two or more step counts (the headline eps; every
        # eps of the sweep with evaluation.sweep.full_grid); likewise one row per attack and step count below.
        many_steps = base.groupby("eps_255")["steps"].nunique()
        st = base[base.eps_255.isin(many_steps[many_steps >= 2].index) | (base.eps_255 == e_fixed)]
        st = st.pivot_table(index=["attack", "eps_255"], columns="steps", values="miou", aggfunc="mean") * 100
        st = st.sort_index(key=lambda ix: ix.map(order) if ix.name == "attack" else ix)
        st.index = st.index.set_levels([f"{e:g}/255" for e in st.index.levels[1]], level=1).rename(["attack", "eps"])
        st.columns = [f"{c} steps" for c in st.columns]
        tables["steps"] = st.round(2)
        _write(tables["steps"], out_dir, "steps", f"mIoU (%) of `{sm}` versus attack steps")
        many_eps = base.groupby("steps")["eps_255"].nunique()
        ep = base[base.steps.isin(many_eps[many_eps >= 2].index) | (base.steps == s_fixed)]
        ep = ep.pivot_table(index=["attack", "steps"], columns="eps_255", values="miou", aggfunc="mean") * 100
        ep = ep.sort_index(key=lambda ix: ix.map(order) if ix.name == "attack" else ix)
        ep.columns = [f"eps {c:g}/255" for c in ep.columns]
        tables["eps"] = ep.round(2)
        _write(tables["eps"], out_dir, "eps", f"mIoU (%) of `{sm}` versus eps")

    abl = spec.get("ablation")
    if abl:
        am = abl["method"]
        rows = []
        variants = abl["attacks"]  # [[label, attack], ...] (keeps the config's order) or a dict
        for label, name in (variants.items() if isinstance(variants, dict) else variants):
            sel = long[(long.method == am) & (long.attack == name) & (long.eps_255 == h_eps) & (long.steps == h_steps)]
            rows.append({"variant": label, "attack": name, "miou": sel["miou"].mean() * 100 if len(sel) else math.nan,
                         "pixel_acc": sel["pixel_acc"].mean() * 100 if len(sel) else math.nan})
        tables["ablation"] = pd.DataFrame(rows).set_index("variant").round(2)
        _write(tables["ablation"], out_dir, "ablation",
               f"EroSeg ablation on `{am}`: mIoU and pixel accuracy (%), eps {h_eps:g}/255, {h_steps} steps")
    return tables
