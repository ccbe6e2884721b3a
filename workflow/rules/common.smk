# Config validation, derived settings, wildcard constraints and input functions.

import hashlib
import json
import os
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

RUN = config["run"]
OUT = f"results/{RUN}"
PKG = Path(workflow.basedir) / "eroseg"


def _parse(value, eps=None):
    """Numbers in the config may be written "8/255" or, for step sizes, "eps/4"."""
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).replace(" ", "")
    if s.startswith("eps") and eps is not None:
        op, k = s[3], float(s[4:])
        return eps / k if op == "/" else eps * k
    if "/" in s:
        a, b = s.split("/")
        return float(a) / float(b)
    return float(s)


def eps_tag(eps):
    """File-name tag of an eps: its value in 1/255 units ("8" for 8/255)."""
    return f"{round(_parse(eps) * 255, 4):g}"


def source_hash(*patterns):
    """Hash of package sources, passed as a param so a code change reruns what it affects."""
    h = hashlib.sha256()
    for pattern in patterns:
        for f in sorted(PKG.glob(pattern)):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


CODE_DATA = source_hash("data/*.py", "io.py")
CODE_TRAIN = source_hash("data/*.py", "io.py", "models.py", "train.py", "attacks/*.py", "metrics.py")
CODE_EVAL = source_hash("data/*.py", "io.py", "models.py", "evaluate.py", "attacks/*.py", "metrics.py")
CODE_AGG = source_hash("aggregate.py", "metrics.py", "io.py")
CODE_FIG = source_hash("figures.py", "aggregate.py", "io.py")

DATASET = config["dataset"]
SYNTH = DATASET["name"] == "synthetic"
if SYNTH:
    DATA_ROOT = f"{OUT}/data/synthetic"
else:
    if not DATASET.get("root"):
        raise ValueError(f"config key dataset.root: required for dataset {DATASET['name']!r} (path to its root)")
    DATA_ROOT = os.path.expandvars(os.path.expanduser(DATASET["root"]))
    if "$" in DATA_ROOT:
        raise ValueError(f"config key dataset.root: {DATASET['root']!r} names an environment variable that is not set")

METHODS = list(config["methods"])
SEEDS = [int(s) for s in config["seeds"]]
EVAL = config["evaluation"]
ATTACKS = EVAL["attacks"]
HEAD_EPS = _parse(EVAL["headline"]["eps"])
HEAD_STEPS = int(EVAL["headline"]["steps"])
SINGLE_STEP = {"fgsm"}  # attacks whose steps are fixed at 1


def _check_names():
    for key in ("main_attacks", "worst_case"):
        for a in EVAL[key]:
            if a not in ATTACKS:
                raise ValueError(f"config key evaluation.{key}: unknown attack setting {a!r}; defined: {sorted(ATTACKS)}")
    for a in EVAL["sweep"]["attacks"]:
        if a not in ATTACKS:
            raise ValueError(f"config key evaluation.sweep.attacks: unknown attack setting {a!r}; defined: {sorted(ATTACKS)}")
    for label, a in EVAL["ablation"]["variants"].items():
        if a not in ATTACKS:
            raise ValueError(f"config key evaluation.ablation.variants.{label}: unknown attack setting {a!r}")
    for key in ("sweep", "ablation", "samples"):
        m = EVAL[key]["method"]
        if m not in METHODS:
            raise ValueError(f"config key evaluation.{key}.method: unknown method {m!r}; defined: {METHODS}")
    if EVAL["samples"]["attack"] not in ATTACKS:
        raise ValueError(f"config key evaluation.samples.attack: unknown attack setting {EVAL['samples']['attack']!r}")


_check_names()


def _steps_of(attack, steps):
    return 1 if ATTACKS[attack]["attack"] in SINGLE_STEP else int(steps)


def eval_settings():
    """Every (method, seed, attack, eps tag, steps) the config asks for, without duplicates."""
    out = set()
    for m in METHODS:
        for s in SEEDS:
            for a in EVAL["main_attacks"]:
                out.add((m, s, a, eps_tag(HEAD_EPS), _steps_of(a, HEAD_STEPS)))
    sw = EVAL["sweep"]
    for a in sw["attacks"]:
        if sw.get("full_grid"):
            grid = [(e, st) for e in sw["eps"] for st in sw["steps"]]
        else:  # steps at the headline eps, eps at the headline steps
            grid = [(HEAD_EPS, st) for st in sw["steps"]] + [(e, HEAD_STEPS) for e in sw["eps"]]
        for e, st in grid:
            out.add((sw["method"], SEEDS[0], a, eps_tag(e), _steps_of(a, st)))
    ab = EVAL["ablation"]
    for a in ab["variants"].values():
        out.add((ab["method"], SEEDS[0], a, eps_tag(HEAD_EPS), _steps_of(a, HEAD_STEPS)))
    return sorted(out)


def model_path(method, seed):
    return f"{OUT}/models/{method}/seed{seed}/model.pt"


def eval_path(method, seed, attack, eps, steps):
    return f"{OUT}/eval/{method}/seed{seed}/{attack}/eps{eps}_steps{steps}.json"


def clean_paths():
    return [f"{OUT}/eval/{m}/seed{s}/clean.json" for m in METHODS for s in SEEDS]


def all_eval_paths():
    return clean_paths() + [eval_path(*k) for k in eval_settings()]


def samples_path():
    sm = EVAL["samples"]
    return f"{OUT}/samples/{sm['method']}_seed{SEEDS[0]}_{sm['attack']}.npz"


def attack_params(attack, eps_tag_value, steps):
    """CLI parameters of one evaluation: the setting's params plus eps, steps, step_size."""
    entry = ATTACKS[attack]
    params = dict(entry.get("params") or {})
    eps = float(eps_tag_value) / 255
    params["eps"] = eps
    params["steps"] = int(steps)
    if entry["attack"] in SINGLE_STEP:
        params.pop("step_size", None)
    else:
        params["step_size"] = _parse(params.get("step_size", EVAL["step_size"]), eps)
    return params


def training_attack(method):
    entry = config["methods"][method]
    if not entry.get("attack"):
        return None, {}
    at = config["adversarial_training"]
    eps = _parse(at["eps"])
    params = {"eps": eps, "steps": int(at["steps"]), "step_size": _parse(at["step_size"], eps)}
    params.update(entry.get("params") or {})
    return entry["attack"], params


def aggregate_spec():
    return {
        "methods": METHODS,
        "headline": {"eps": HEAD_EPS, "steps": HEAD_STEPS},
        "attacks": EVAL["main_attacks"],
        "worst_case": EVAL["worst_case"],
        "single_step": sorted(a for a in ATTACKS if ATTACKS[a]["attack"] in SINGLE_STEP),
        "sweep": {
            "method": EVAL["sweep"]["method"],
            "attacks": EVAL["sweep"]["attacks"],
            "eps_fixed": HEAD_EPS,
            "steps_fixed": HEAD_STEPS,
        },
        "ablation": {"method": EVAL["ablation"]["method"], "attacks": [[k, v] for k, v in EVAL["ablation"]["variants"].items()]},
    }


def figure_spec():
    spec = aggregate_spec()
    spec.update(
        dataset=DATASET["name"],
        dpi=config["figures"]["dpi"],
        per_class={"method": EVAL["sweep"]["method"], "attacks": EVAL["main_attacks"], "seed": SEEDS[0]},
        qualitative_title=(
            f"{EVAL['samples']['method']} under {EVAL['samples']['attack']}, "
            f"eps {HEAD_EPS * 255:g}/255, {HEAD_STEPS} steps"
        ),
        erosion_title=f"{EVAL['samples']['attack']} on {EVAL['samples']['method']}: erosion over iterations (first image)",
    )
    return spec


TABLES = ["main", "results", "steps", "eps", "ablation"]
FIGURES = ["robust_vs_steps", "robust_vs_eps", "per_class_iou", "training_curves", "qualitative", "erosion"]
FIGURE_CAPTIONS = {
    "robust_vs_steps": "fig_sweeps",
    "robust_vs_eps": "fig_sweeps",
    "per_class_iou": "fig_per_class",
    "training_curves": "fig_training",
    "qualitative": "fig_qualitative",
    "erosion": "fig_erosion",
}


def all_outputs():
    return (
        [f"{OUT}/data/manifest.csv"]
        + [model_path(m, s) for m in METHODS for s in SEEDS]
        + all_eval_paths()
        + [f"{OUT}/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md")]
        + [f"{OUT}/figures/{f}.{ext}" for f in FIGURES for ext in ("png", "svg")]
    )


def js(obj):
    """JSON for a shell argument (quoted in the rule with :q)."""
    return json.dumps(obj, sort_keys=True)


wildcard_constraints:
    method="|".join(METHODS) if METHODS else "x^",
    seed=r"\d+",
    attack="|".join(sorted(ATTACKS, key=len, reverse=True)),
    eps=r"[0-9.]+",
    steps=r"\d+",
