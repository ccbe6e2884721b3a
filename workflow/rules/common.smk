# Config validation, the environment of the jobs, source hashes, and the evaluation plan (eroseg.plan) the
# rules read their settings, paths and outputs from.

import difflib
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

import yaml

from snakemake.utils import validate

from eroseg.io import EVAL_MANIFEST, eval_folder_files
from eroseg.plan import EvaluationPlan, attack_registry, check_attack_params, flow_arg, json_arg
from eroseg.report.registry import FIGURE_FORMATS, TABLE_FORMATS
from eroseg.stats import claims_options

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

PKG = Path(workflow.basedir) / "eroseg"


def source_hash(*patterns):
    """Hash of package sources, passed as a param so a code change reruns what it affects."""
    h = hashlib.sha256()
    for pattern in patterns:
        for f in sorted(PKG.glob(pattern)):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


CODE_DATA = source_hash("data/*.py", "io.py", "conventions.py")
CODE_TRAIN = source_hash("data/*.py", "io.py", "models.py", "training/*.py", "attacks/*.py", "metrics.py", "numbers.py",
                         "evaluate.py", "seeds.py", "conventions.py")
CODE_EVAL = source_hash("data/*.py", "io.py", "models.py", "evaluate.py", "attacks/*.py", "metrics.py", "numbers.py",
                        "conventions.py", "seeds.py", "tune.py", "external.py", "inference.py", "shards.py", "objects.py")
CODE_AGG = source_hash("aggregate.py", "report/*.py", "stats.py", "evaluate.py", "metrics.py", "io.py", "numbers.py",
                       "objects.py")
CODE_FIG = source_hash("figures.py", "report/*.py", "aggregate.py", "io.py", "objects.py")

# The attack registry's summary and the DAG-time parameter checks are cached in .snakemake/eroseg/ (or
# $EROSEG_CACHE_DIR), keyed by the source of eroseg.attacks and eroseg.numbers (see eroseg.plan).
_SOURCE_KEY = source_hash("attacks/*.py", "numbers.py", "conventions.py", "inference.py")
_CACHE_DIR = Path(os.environ.get("EROSEG_CACHE_DIR") or Path(".snakemake") / "eroseg")

PLAN = EvaluationPlan(config, attack_registry(_CACHE_DIR, _SOURCE_KEY))
DATASET, EVAL, TUNE = config["dataset"], config["evaluation"], PLAN.tuning
SYNTH, DATA_ROOT = PLAN.synthetic, PLAN.data_root()
METHODS, SEEDS, TRAINED, TUNED_FAMILIES = PLAN.methods, PLAN.seeds, PLAN.trained, PLAN.tuned_families
ATTACKS, HEAD_EPS, HEAD_STEPS = EVAL["attacks"], PLAN.head_eps, PLAN.head_steps

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


def _check_eval_folders():
    """A finished evaluation folder (it has its manifest) that lost a file is refused, naming the file:
    Snakemake sees only the folder, and aggregating the rest would change the tables silently."""
    for folder in PLAN.all_eval_dirs():
        if (Path(folder) / EVAL_MANIFEST).is_file():
            eval_folder_files(folder)


_check_eval_folders()
check_attack_params(PLAN, _CACHE_DIR, _SOURCE_KEY)

# Path helpers (eroseg.plan spells every path of results/<run>/) and input functions of the rules.
model_path, eval_dir, tuning_path, log_path = PLAN.model_path, PLAN.eval_dir, PLAN.tuning_path, PLAN.log_path
benchmark_path, samples_path, all_eval_dirs = PLAN.benchmark_path, PLAN.samples_path, PLAN.all_eval_dirs
js, flow = json_arg, flow_arg


def training_tuning_file(method):
    return PLAN.training_tuning_file(method)


def training_attack(method):
    return PLAN.training_attack(method)


def training_objective(method):
    return PLAN.training_objective(method)


def all_outputs():
    return PLAN.all_outputs()


def report_outputs(items, folder, formats, category, label):
    """The outputs of the aggregate or figures rule: each item's file in the first format in the report, with
    its caption (workflow/report/<caption>.rst), then its other formats."""
    return ([report(f"{folder}/{item.name}.{formats[0]}", caption=f"../report/{item.caption}.rst",
                    category=category, labels={label: item.name}) for item in items]
            + [f"{folder}/{item.name}.{ext}" for item in items for ext in formats[1:]])
