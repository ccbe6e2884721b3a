# Config validation, derived settings, wildcard constraints and input functions.

import difflib
import hashlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

from snakemake.utils import validate

from eroseg.io import EVAL_MANIFEST, eval_folder_files
from eroseg.numbers import budgets_as_text, eps_tag, parse_number, resolve_attack_params
from eroseg.stats import claims_options
from eroseg.tune import grid_candidates

SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"

# Methods with an `external` entry (a pretrained model of the user's, not trained here; eroseg.external owns
# the entry): checked before the schema, so that a bad entry is one line naming its key.
from eroseg.external import TRUST_ENV, check_methods, factory_file, trusted_factories

EXTERNAL = check_methods(config.get("methods"))


def _unknown_keys(cfg, schema, where=""):
    """One line for the first config key the schema does not know, with the closest valid key."""
    props = schema.get("properties")
    if not isinstance(cfg, dict) or props is None:
        return
    for key, value in cfg.items():
        if key not in props:
            if schema.get("additionalProperties", True) is False:
                close = difflib.get_close_matches(str(key), list(props), n=1)
                hint = f"; did you mean {where}{close[0]}?" if close else f"; valid keys: {sorted(props)}"
                raise ValueError(f"config key {where}{key}: unknown{hint}")
            continue
        _unknown_keys(value, props[key], f"{where}{key}.")


_unknown_keys(config, yaml.safe_load(SCHEMA.read_text()))
claims_options((config.get("evaluation") or {}).get("claims"))  # a bad claims value: one line naming its key
validate(config, schema="../schemas/config.schema.yaml")

# GPU slots per GPU for eroseg.device (several light jobs may share a GPU), unless the user set it.
os.environ.setdefault("EROSEG_JOBS_PER_GPU", str(config["resources"].get("jobs_per_gpu", 1)))

# Rules run the package as `"$EROSEG_PYTHON" -m eroseg ...`: the interpreter Snakemake runs under, so a
# Snakemake started as .venv/bin/snakemake (venv not activated) finds it too, or the environment's own
# `python` when rules run in their conda environments (--sdm conda). An environment variable, not a
# parameter of the rules, as the interpreter's path must not make Snakemake rerun a job.
_DEPLOY = getattr(getattr(workflow, "deployment_settings", None), "deployment_method", None) or ()
os.environ.update(EROSEG_PYTHON="python" if "conda" in str(_DEPLOY).lower() else sys.executable)
# One process per GPU through torchrun when a training job gets several GPUs.
TRAIN_MODULE = (
    f"-m torch.distributed.run --standalone --nproc_per_node={config['resources']['gpus_per_train']} -m eroseg"
    if config["resources"]["gpus_per_train"] > 1
    else "-m eroseg"
)

RUN = config["run"]
OUT = f"results/{RUN}"
PKG = Path(workflow.basedir) / "eroseg"


def _parse(value, eps=None, key="value", budget=True):
    """Numbers in the config: 0.03, "8/255" or, for step sizes, "eps/4" (eroseg.numbers owns the grammar)."""
    return parse_number(value, eps=eps, name=f"config key {key}", max_value=1.0 if budget else None)


def _check_budgets():
    """Every eps and step size of the config parsed at once, so that each bad one is named, not only the first."""
    ev, at = config["evaluation"], config["adversarial_training"]
    checks, sweep = ev.get("checks") or {}, ev.get("sweep") or {}
    budgets = ([("evaluation.headline.eps", ev["headline"]["eps"]), ("adversarial_training.eps", at["eps"])]
               + [("evaluation.checks.eps", e) for e in checks.get("eps") or []]
               + [("evaluation.sweep.eps", e) for e in sweep.get("eps") or []])
    errors, eps_of = [], {}
    for key, value in budgets:
        try:
            eps_of[key] = _parse(value, key=key)
        except ValueError as err:
            errors.append(str(err))
    for key, value, eps_key in (("evaluation.step_size", ev["step_size"], "evaluation.headline.eps"),
                                ("adversarial_training.step_size", at["step_size"], "adversarial_training.eps")):
        if eps_key in eps_of:
            try:
                _parse(value, eps_of[eps_key], key=key)
            except ValueError as err:
                errors.append(str(err))
    if errors:
        raise ValueError("\n".join(errors) if len(errors) == 1 else
                         f"{len(errors)} bad numbers in the config:\n" + "\n".join(errors))


_check_budgets()


def source_hash(*patterns):
    """Hash of package sources, passed as a param so a code change reruns what it affects."""
    h = hashlib.sha256()
    for pattern in patterns:
        for f in sorted(PKG.glob(pattern)):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


CODE_DATA = source_hash("data/*.py", "io.py")
CODE_TRAIN = source_hash("data/*.py", "io.py", "models.py", "training/*.py", "attacks/*.py", "metrics.py", "numbers.py",
                         "evaluate.py", "seeds.py")
CODE_EVAL = source_hash("data/*.py", "io.py", "models.py", "evaluate.py", "attacks/*.py", "metrics.py", "numbers.py")
CODE_AGG = source_hash("aggregate.py", "stats.py", "evaluate.py", "metrics.py", "io.py", "numbers.py")
CODE_FIG = source_hash("figures.py", "aggregate.py", "io.py")

# What the Snakefile needs from the attack registry (and the DAG-time parameter checks) is cached in
# .snakemake/eroseg/ (or $EROSEG_CACHE_DIR), keyed by the source of eroseg.attacks and eroseg.numbers:
# importing the registry imports torch (~2.5 s), which every dry run and every Snakemake inside a SLURM
# job would pay again. Nothing in it depends on the working folder, so runs may share one.
_SOURCE_KEY = source_hash("attacks/*.py", "numbers.py")
_CACHE_DIR = Path(os.environ.get("EROSEG_CACHE_DIR") or Path(".snakemake") / "eroseg")


def _cache_write(path, text):
    try:  # a read-only working folder only costs the cache
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        pass


def _registry_info():
    """Per registered attack: whether it takes ``steps`` and its parameter names (cached, see above)."""
    path = _CACHE_DIR / f"registry-{_SOURCE_KEY}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    from eroseg.attacks import ATTACKS as registered, attack_parameters, attack_uses_steps

    info = {name: {"uses_steps": attack_uses_steps(name), "parameters": sorted(attack_parameters(name))}
            for name in registered}
    _cache_write(path, json.dumps(info))  # registration order kept
    return info


REGISTRY = _registry_info()


def _registered(name, key=None):
    """The registry entry of attack ``name``; an unknown name fails naming ``key`` and the closest valid name."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = f"config key {key}: " if key else ""
        raise ValueError(f"{where}unknown attack {name!r}; valid: {', '.join(REGISTRY)}{hint}")
    return REGISTRY[name]


DATASET = config["dataset"]
SYNTH = DATASET["name"] == "synthetic"
if SYNTH:
    DATA_ROOT = f"{OUT}/data/synthetic"
else:
    if not DATASET.get("root"):
        raise ValueError(f"config key dataset.root: required for dataset {DATASET['name']!r} (path to its root)")
    if re.search(r"\$\(|`", DATASET["root"]):
        raise ValueError(f"config key dataset.root: {DATASET['root']!r} holds a shell command ($(...) or `...`), "
                         "which is never run; give the folder's path (~ and $VARS are expanded)")
    _unset = [m.group(0) for m in re.finditer(r"\$(\w+)|\$\{(\w+)\}", DATASET["root"])
              if (m.group(1) or m.group(2)) not in os.environ]
    if _unset:
        raise ValueError(f"config key dataset.root: {DATASET['root']!r} names the environment variable "
                         f"{_unset[0]}, which is not set; set it or give the folder's path")
    DATA_ROOT = os.path.expandvars(os.path.expanduser(DATASET["root"]))

METHODS = list(config["methods"])
SEEDS = [int(s) for s in config["seeds"]]
TRAINED = [m for m in METHODS if m not in EXTERNAL]
for _m, _entry in EXTERNAL.items():
    if "weights" in _entry:
        _entry["weights"] = os.path.expanduser(_entry["weights"])
        if not Path(_entry["weights"]).is_file():
            raise ValueError(f"config key methods.{_m}.external.weights: file {_entry['weights']!r} not found "
                             f"(paths are relative to the working folder, {os.getcwd()})")
    if factory_file(_entry["factory"]) and not Path(os.path.expanduser(factory_file(_entry["factory"]))).is_file():
        raise ValueError(f"config key methods.{_m}.external.factory: file {factory_file(_entry['factory'])!r} not "
                         f"found (paths are relative to the working folder, {os.getcwd()})")
# The checkpoints the import rule writes name their factories; the jobs may rebuild those of this config.
os.environ[TRUST_ENV] = json.dumps(sorted(set(trusted_factories()) | {e["factory"] for e in EXTERNAL.values()}))


def seeds_of(method):
    """Seeds a method is evaluated with: every seed for a trained method (one model per seed); the first for
    an external one, which is one model (its seed is the attacks' random start)."""
    return SEEDS[:1] if method in EXTERNAL else SEEDS

EVAL = config["evaluation"]
ATTACKS = EVAL["attacks"]
HEAD_EPS = _parse(EVAL["headline"]["eps"], key="evaluation.headline.eps")
HEAD_STEPS = int(EVAL["headline"]["steps"])
SEA = EVAL.get("sea")
TEST_SPLIT = DATASET["test_split"]
VAL_SPLIT = DATASET["val_split"]
# Nullable blocks carry no schema defaults (validate() cannot fill defaults into a null); they are set here.
CHECKS = EVAL.get("checks")
if CHECKS:
    CHECKS = {"restarts": None, "max_restart_gain": 1.0, "seeds": "all", **CHECKS}
TUNE = config.get("tuning") or {}
TUNED_FAMILIES = list((TUNE.get("grids") or {}))
if CHECKS:
    CHECK_EPS = [_parse(e, key="evaluation.checks.eps") for e in CHECKS["eps"]]


def _check_names():
    def known(key, name, pool=ATTACKS, what="attack setting"):
        if name not in pool:
            raise ValueError(f"config key {key}: unknown {what} {name!r}; defined: {sorted(pool)}")

    # Attack names first, so that a misspelt one is named as such and not as, e.g., a missing tuning grid.
    for a, entry in ATTACKS.items():
        _registered(entry["attack"], f"evaluation.attacks.{a}.attack")
    for m, entry in config["methods"].items():
        if entry.get("attack"):
            _registered(entry["attack"], f"methods.{m}.attack")
    for key in ("main_attacks", "worst_case", "sea_plus"):
        for a in EVAL.get(key) or []:
            known(f"evaluation.{key}", a)
    if SEA:
        known("evaluation.sea", SEA)
    for a in EVAL["sweep"]["attacks"]:
        known("evaluation.sweep.attacks", a)
    for label, a in EVAL["ablation"]["variants"].items():
        known(f"evaluation.ablation.variants.{label}", a)
    for key in ("sweep", "ablation", "samples"):
        known(f"evaluation.{key}.method", EVAL[key]["method"], METHODS, "method")
    known("evaluation.samples.attack", EVAL["samples"]["attack"])
    if CHECKS:
        known("evaluation.checks.setting", CHECKS["setting"])
        if CHECKS.get("restarts"):
            known("evaluation.checks.restarts", CHECKS["restarts"])
    for fam in TUNED_FAMILIES:
        known("tuning.grids", fam)
    for m in TUNE.get("models", []):
        known("tuning.models", m, METHODS, "method")
    for a, entry in ATTACKS.items():
        if entry.get("tuned") and a not in TUNED_FAMILIES:
            raise ValueError(f"config key evaluation.attacks.{a}.tuned: no grid for {a!r} under tuning.grids")
    for m, entry in config["methods"].items():
        if entry.get("tuned") and entry.get("attack") not in TUNED_FAMILIES:
            raise ValueError(f"config key methods.{m}.tuned: no tuning grid for its attack {entry.get('attack')!r} "
                             f"under tuning.grids (grids: {TUNED_FAMILIES})")
    claims = EVAL.get("claims") or {}
    for pair in claims.get("attack_pairs", []):
        for a in pair:
            known("evaluation.claims.attack_pairs", a.split(":")[0])
    ats = claims.get("eroseg_at") or []
    for m in ([ats] if isinstance(ats, str) else list(ats)) + list(claims.get("at_baselines", [])):
        if m is not None:
            known("evaluation.claims", m, METHODS, "method")


_check_names()


def _check_budget_params():
    """eps and steps come from where a setting runs (headline, sweep, checks; its own ``steps`` key), and name
    its result files: a setting's own ``params.eps`` / ``params.steps`` or a tuning grid over them is refused
    rather than overwritten or laid over a file that names another budget."""
    where_eps = "evaluation.headline.eps, evaluation.sweep.eps or evaluation.checks.eps"
    for a, entry in ATTACKS.items():
        params = entry.get("params") or {}
        if "eps" in params:
            raise ValueError(f"config key evaluation.attacks.{a}.params.eps: a setting runs at the eps of the "
                             f"table it serves ({where_eps}), which would overwrite {params['eps']!r}; remove it "
                             "and list that eps there")
        if "steps" in params:
            raise ValueError(f"config key evaluation.attacks.{a}.params.steps: would be overwritten by the "
                             f"headline or sweep steps; fix this setting's steps with evaluation.attacks.{a}.steps: "
                             f"{params['steps']!r} instead")
    for fam, grid in (TUNE.get("grids") or {}).items():
        for key in ("eps", "steps"):
            if key in grid:
                raise ValueError(f"config key tuning.grids.{fam}.{key}: {key} is fixed by the evaluation, not "
                                 "tuned (it names the result files); tune the attack's other parameters")


_check_budget_params()


def steps_of(setting, steps):
    """Steps of a setting in a grid of ``steps``: 1 for single-step attacks (the registry says which, e.g.
    FGSM), else the setting's own ``steps`` if the config fixes them (e.g. SEA's iterations), else ``steps``."""
    if not _registered(ATTACKS[setting]["attack"])["uses_steps"]:
        return 1
    return int(ATTACKS[setting].get("steps") or steps)


def model_settings(method, seed):
    """Every (setting, eps tag, steps) evaluated on one model, without duplicates."""
    head = eps_tag(HEAD_EPS)
    out = {(a, head, steps_of(a, HEAD_STEPS)) for a in EVAL["main_attacks"] + ([SEA] if SEA else [])}
    if CHECKS and (CHECKS["seeds"] == "all" or seed == SEEDS[0]):
        out |= {(CHECKS["setting"], eps_tag(e), int(CHECKS["steps"])) for e in CHECK_EPS}
        if CHECKS.get("restarts"):
            out.add((CHECKS["restarts"], head, steps_of(CHECKS["restarts"], HEAD_STEPS)))
    sw = EVAL["sweep"]
    if method == sw["method"] and seed == SEEDS[0]:
        eps_list = [_parse(e, key="evaluation.sweep.eps") for e in sw["eps"]]
        if sw.get("full_grid"):
            grid = [(e, st) for e in eps_list for st in sw["steps"]]
        else:  # steps at the headline eps, eps at the headline steps
            grid = [(HEAD_EPS, st) for st in sw["steps"]] + [(e, HEAD_STEPS) for e in eps_list]
        out |= {(a, eps_tag(e), steps_of(a, st)) for a in sw["attacks"] for e, st in grid}
    if method == EVAL["ablation"]["method"]:
        out |= {(a, head, steps_of(a, HEAD_STEPS)) for a in EVAL["ablation"]["variants"].values()}
    return sorted(out)


def model_path(method, seed):
    return f"{OUT}/models/{method}/seed{seed}/model.pt"


def eval_dir(method, seed):
    return f"{OUT}/eval/{method}/seed{seed}"


def eval_file(method, seed, setting, eps, steps):
    return f"{eval_dir(method, seed)}/{setting}/eps{eps}_steps{steps}.json"


def all_eval_dirs():
    return [eval_dir(m, s) for m in METHODS for s in seeds_of(m)]


def _check_eval_folders():
    """A finished evaluation folder (it has its manifest) that lost a file is refused, naming the file:
    Snakemake sees only the folder, and aggregating the rest would change the tables silently."""
    for folder in all_eval_dirs():
        if (Path(folder) / EVAL_MANIFEST).is_file():
            eval_folder_files(folder)


_check_eval_folders()


def samples_path():
    sm = EVAL["samples"]
    return f"{OUT}/samples/{sm['method']}_seed{SEEDS[0]}_{sm['attack']}.npz"


def attack_params(setting, eps_tag_value, steps):
    """Parameters of one evaluation: the setting's params plus eps, steps, step_size and best_iterate."""
    entry = ATTACKS[setting]
    accepted = _registered(entry["attack"])["parameters"]
    params = dict(entry.get("params") or {})
    eps = float(eps_tag_value) / 255
    params["eps"] = eps
    params["steps"] = int(steps)
    if "step_size" in accepted:
        params["step_size"] = _parse(params.get("step_size", EVAL["step_size"]), eps,
                                     key=f"evaluation.attacks.{setting}.params.step_size")
    if "best_iterate" in accepted:
        params.setdefault("best_iterate", bool(EVAL["best_iterate"]))
    return params


def tuning_path(family):
    return f"{OUT}/tuning/{family}.json"


def evaluation_settings(method, seed):
    """The ``--settings`` list of one model's evaluation job (clean first)."""
    items = [{"setting": "clean", "attack": "none", "out": f"{eval_dir(method, seed)}/clean.json"}]
    for setting, tag, steps in model_settings(method, seed):
        item = {"setting": setting, "attack": ATTACKS[setting]["attack"],
                "params": attack_params(setting, tag, steps),
                "restarts": int(ATTACKS[setting].get("restarts", 1)),
                "out": eval_file(method, seed, setting, tag, steps)}
        if ATTACKS[setting].get("tuned"):
            item["params_file"] = tuning_path(setting)
        items.append(item)
    return items


def tuning_inputs_of_eval(method, seed):
    return sorted({i["params_file"] for i in evaluation_settings(method, seed) if "params_file" in i})


def tuning_base_params(family):
    """Parameters every tuning candidate of ``family`` shares: the setting's own at the headline eps, tuning steps."""
    return attack_params(family, eps_tag(HEAD_EPS), int(TUNE["steps"]))


def _attacks_to_check():
    """(config key, attack, parameters) of every attack the config builds, each once."""
    seen, out = set(), []
    for m in METHODS:
        for s in SEEDS:
            for item in evaluation_settings(m, s)[1:]:
                key = (item["setting"], json.dumps(item["params"], sort_keys=True))
                if key not in seen:
                    seen.add(key)
                    out.append((f"evaluation.attacks.{item['setting']}", item["attack"],
                                resolve_attack_params(item["params"])))
    for fam in TUNED_FAMILIES:
        for cand in grid_candidates(TUNE["grids"][fam]):
            out.append((f"tuning.grids.{fam}: candidate {cand}", ATTACKS[fam]["attack"],
                        resolve_attack_params({**tuning_base_params(fam), **cand})))
    for m in METHODS:
        name, params = training_attack(m)
        if name:
            out.append((f"methods.{m}", name, params))
    return out


def _check_attack_params():
    """Every attack setting is built once here, so a bad parameter fails before any model is trained.

    A set of settings that passed is remembered (in the cache above, with the registry's source key),
    so an unchanged config is not checked, and torch not imported, again."""
    todo = _attacks_to_check()
    digest = hashlib.sha256(json.dumps([_SOURCE_KEY, todo], sort_keys=True, default=str).encode()).hexdigest()
    marker = _CACHE_DIR / f"checked-{digest[:24]}"
    if marker.exists():
        return
    from eroseg.attacks import create_attack

    for key, name, params in todo:
        try:
            create_attack(name, **params)
        except (TypeError, ValueError) as err:
            raise ValueError(f"config key {key}: {err}") from None
    _cache_write(marker, "ok\n")


def training_tuning_file(method):
    """The tuning result a method's training attack takes its parameters from (``tuned: true``), or None."""
    entry = config["methods"][method]
    return tuning_path(entry["attack"]) if entry.get("tuned") else None


def training_attack(method):
    entry = config["methods"][method]
    if not entry.get("attack"):
        return None, {}
    at = config["adversarial_training"]
    eps = _parse(at["eps"], key="adversarial_training.eps")
    params = {"eps": eps, "steps": int(at["steps"]),
              "step_size": _parse(at["step_size"], eps, key="adversarial_training.step_size")}
    params.update(entry.get("params") or {})
    return entry["attack"], params


def training_objective(method):
    """``methods.<m>.objective`` (default: adversarial training with the method's attack); an objective that
    makes its own examples (any but ``adversarial``) gets adversarial_training's eps, step_size and steps."""
    objective = dict(config["methods"][method].get("objective") or {"name": "adversarial"})
    if objective["name"] != "adversarial":
        objective = {"name": objective["name"], **{k: config["adversarial_training"][k] for k in ("eps", "step_size", "steps")}, **objective}
    return objective


def aggregate_spec():
    claims = claims_options(EVAL.get("claims")) or None  # the bootstrap seed and every default, visible in params
    return {
        "methods": METHODS,
        "headline": {"eps": HEAD_EPS, "steps": HEAD_STEPS},
        "attacks": EVAL["main_attacks"],
        "steps_of": {a: steps_of(a, HEAD_STEPS) for a in ATTACKS if steps_of(a, HEAD_STEPS) != HEAD_STEPS},
        "sea": SEA,
        "sea_plus": EVAL.get("sea_plus") or [],
        "worst_case": EVAL.get("worst_case") or EVAL["main_attacks"],
        "worst_case_rule": EVAL["worst_case_rule"],
        "checks": {**CHECKS, "eps": CHECK_EPS, "seeds": SEEDS if CHECKS["seeds"] == "all" else SEEDS[:1]} if CHECKS else None,
        "claims": claims,
        "sweep": {"method": EVAL["sweep"]["method"], "attacks": EVAL["sweep"]["attacks"]},
        "ablation": {"method": EVAL["ablation"]["method"], "attacks": [[k, v] for k, v in EVAL["ablation"]["variants"].items()]},
    }


def figure_spec():
    spec = aggregate_spec()
    spec["sweep"].update(eps_fixed=HEAD_EPS, steps_fixed=HEAD_STEPS)
    spec.update(
        dataset=DATASET["name"],
        dpi=config["figures"]["dpi"],
        per_class={"method": EVAL["sweep"]["method"], "attacks": EVAL["main_attacks"], "seed": SEEDS[0]},
        samples={"method": EVAL["samples"]["method"], "attack": EVAL["samples"]["attack"], "eps": HEAD_EPS,
                 "steps": HEAD_STEPS},
    )
    return spec


_check_attack_params()

#: Tables aggregate writes (CSV, Markdown, HTML); the optional ones only when configured.
TABLES = ["main", "results", "steps", "eps", "ablation", "timings"] + (["tuning"] if TUNED_FAMILIES else []) + (["sea"] if SEA else []) + (
    ["checks"] if CHECKS else []) + (["claims", "verdicts"] if EVAL.get("claims") else [])
TABLE_CAPTIONS = {"main": "table_main", "claims": "table_claims", "verdicts": "table_verdicts", "checks": "table_checks",
                  "sea": "table_sea"}
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
        + [tuning_path(f) for f in TUNED_FAMILIES]
        + [model_path(m, s) for m in METHODS for s in seeds_of(m)]
        + all_eval_dirs()
        + [f"{OUT}/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md", "html")]
        + [f"{OUT}/figures/{f}.{ext}" for f in FIGURES for ext in ("png", "svg")]
    )


def benchmark_files():
    """Per-job wall times Snakemake records (``benchmark:``) for the timings table."""
    return ([f"{OUT}/benchmarks/train/{m}_seed{s}.tsv" for m in TRAINED for s in SEEDS]
            + [f"{OUT}/benchmarks/evaluate/{m}_seed{s}.tsv" for m in METHODS for s in seeds_of(m)]
            + [f"{OUT}/benchmarks/tune/{f}.tsv" for f in TUNED_FAMILIES])


def js(obj):
    """JSON for a shell argument (quoted with :q where a rule uses it)."""
    return json.dumps(obj, sort_keys=True)


class _FlowDumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # a list used twice is written twice, not as &id001 / *id001
        return True


def flow(obj):
    """YAML flow style (``{methods: [standard, pgd_at], ...}``) for a shell argument, for the params the
    report shows: Snakemake's report escapes every double quote of a JSON param (``{\\"methods\\": ...}``).
    Budgets are written as fractions (``eps: 8/255``); the package reads them back (eroseg.numbers)."""
    obj = budgets_as_text(obj)
    return yaml.dump(obj, Dumper=_FlowDumper, default_flow_style=True, sort_keys=False, width=float("inf")).strip()

