"""The evaluation plan: what the workflow runs, where each file goes, and the checks of the config, as
functions of the config dict (after the schema filled its defaults) and the attack registry's summary.

:class:`EvaluationPlan` is what ``workflow/rules/common.smk`` builds once; the rules call its path helpers
(the one place a path of ``results/<run>/`` is spelt) and its settings. Nothing here imports torch: the
attack registry is summarised by :func:`attack_registry` (cached on disk), and the report's tables and
figures come from :mod:`eroseg.report`'s registries.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shlex
from pathlib import Path

import yaml

from eroseg.numbers import budgets_as_text, eps_tag, parse_number, resolve_attack_params
from eroseg.report import FIGURES, TABLES, ReportItem, ReportSpec, enabled
from eroseg.report.registry import FIGURE_FORMATS, TABLE_FORMATS
from eroseg.stats import claims_options
from eroseg.tune import grid_candidates

#: Defaults of the nullable ``evaluation.checks`` block (the schema cannot fill defaults into a null).
CHECKS_DEFAULTS = {"restarts": None, "max_restart_gain": 1.0, "seeds": "all"}
#: ``evaluation.size`` where the config leaves it out (the schema's default): object summaries on, 4-connected.
SIZE_DEFAULTS = {"connectivity": 4}
#: Defaults of the nullable ``evaluation.min_norm`` block.
MIN_NORM_DEFAULTS = {"norm": "linf", "adv_threshold": 0.99, "max_images": None, "batch_size": None, "methods": None,
                     "seeds": "first"}


class EvaluationPlan:
    """Settings, paths, output lists and report specs of one config.

    Args:
        config: the workflow config, validated by the schema (defaults filled).
        attacks: per registered attack, ``{"uses_steps": bool, "parameters": [names]}`` (:func:`attack_registry`),
            in registration order.
    """

    def __init__(self, config: dict, attacks: dict[str, dict]):
        self.config, self.attacks = config, attacks
        self.out = f"results/{config['run']}"
        self.dataset = config["dataset"]
        self.synthetic = self.dataset["name"] == "synthetic"
        self.methods = list(config["methods"])
        self.seeds = [int(s) for s in config["seeds"]]
        self.external = [m for m, entry in config["methods"].items() if "external" in (entry or {})]
        self.trained = [m for m in self.methods if m not in self.external]
        self.evaluation = config["evaluation"]
        self.settings = self.evaluation["attacks"]
        self.sea = self.evaluation.get("sea")
        checks = self.evaluation.get("checks")
        self.checks = {**CHECKS_DEFAULTS, **checks} if checks else None
        self.tuning = config.get("tuning") or {}
        self.tuned_families = list(self.tuning.get("grids") or {})
        self.check_budgets()
        self.head_eps = self.parse(self.evaluation["headline"]["eps"], key="evaluation.headline.eps")
        self.head_steps = int(self.evaluation["headline"]["steps"])
        self.check_eps = ([self.parse(e, key="evaluation.checks.eps") for e in self.checks["eps"]]
                          if self.checks else [])
        self.check_names()
        self.check_budget_params()
        min_norm = self.evaluation.get("min_norm")
        self.min_norm = {**MIN_NORM_DEFAULTS, **min_norm} if min_norm else None
        self.check_min_norm()
        self.shards = int(self.evaluation.get("shards", 1))
        self.check_tune_split()
        size = self.evaluation.get("size", SIZE_DEFAULTS)
        #: Connectivity of the ground-truth components of the ``size`` table (None: ``evaluation.size`` is off).
        self.size_connectivity = None if size is None else int({**SIZE_DEFAULTS, **size}["connectivity"])

    # ------------------------------------------------------------------ numbers and names
    @staticmethod
    def parse(value, eps=None, key="value", budget=True) -> float:
        """A number of the config: 0.03, "8/255" or, for step sizes, "eps/4" (eroseg.numbers owns the grammar)."""
        return parse_number(value, eps=eps, name=f"config key {key}", max_value=1.0 if budget else None)

    def check_budgets(self) -> None:
        """Every eps and step size of the config parsed at once, so that each bad one is named, not only the first."""
        evaluation, training = self.evaluation, self.config["adversarial_training"]
        checks, sweep = evaluation.get("checks") or {}, evaluation.get("sweep") or {}
        budgets = ([("evaluation.headline.eps", evaluation["headline"]["eps"]), ("adversarial_training.eps",
                                                                                 training["eps"])]
                   + [("evaluation.checks.eps", e) for e in checks.get("eps") or []]
                   + [("evaluation.sweep.eps", e) for e in sweep.get("eps") or []])
        errors, eps_of = [], {}
        for key, value in budgets:
            try:
                eps_of[key] = self.parse(value, key=key)
            except ValueError as err:
                errors.append(str(err))
        for key, value, eps_key in (("evaluation.step_size", evaluation["step_size"], "evaluation.headline.eps"),
                                    ("adversarial_training.step_size", training["step_size"],
                                     "adversarial_training.eps")):
            if eps_key in eps_of:
                try:
                    self.parse(value, eps_of[eps_key], key=key)
                except ValueError as err:
                    errors.append(str(err))
        if errors:
            raise ValueError("\n".join(errors) if len(errors) == 1 else
                             f"{len(errors)} bad numbers in the config:\n" + "\n".join(errors))

    def registered(self, name: str, key: str | None = None) -> dict:
        """The registry entry of attack ``name``; an unknown name fails naming ``key`` and the closest valid name."""
        if name not in self.attacks:
            close = difflib.get_close_matches(str(name), list(self.attacks), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = f"config key {key}: " if key else ""
            raise ValueError(f"{where}unknown attack {name!r}; valid: {', '.join(self.attacks)}{hint}")
        return self.attacks[name]

    def _known(self, key, name, pool=None, what="attack setting") -> None:
        pool = self.settings if pool is None else pool
        if name not in pool:
            raise ValueError(f"config key {key}: unknown {what} {name!r}; defined: {sorted(pool)}")

    def check_names(self) -> None:
        """Every attack, setting and method the config names exists (attack names first, so that a misspelt
        one is named as such and not as, e.g., a missing tuning grid)."""
        evaluation, known = self.evaluation, self._known
        for a, entry in self.settings.items():
            self.registered(entry["attack"], f"evaluation.attacks.{a}.attack")
        for m, entry in self.config["methods"].items():
            if entry.get("attack"):
                self.registered(entry["attack"], f"methods.{m}.attack")
        for key in ("main_attacks", "worst_case", "sea_plus"):
            for a in evaluation.get(key) or []:
                known(f"evaluation.{key}", a)
        if self.sea:
            known("evaluation.sea", self.sea)
        for a in evaluation["sweep"]["attacks"]:
            known("evaluation.sweep.attacks", a)
        for label, a in evaluation["ablation"]["variants"].items():
            known(f"evaluation.ablation.variants.{label}", a)
        for key in ("sweep", "ablation", "samples"):
            known(f"evaluation.{key}.method", evaluation[key]["method"], self.methods, "method")
        known("evaluation.samples.attack", evaluation["samples"]["attack"])
        if self.checks:
            known("evaluation.checks.setting", self.checks["setting"])
            if self.checks.get("restarts"):
                known("evaluation.checks.restarts", self.checks["restarts"])
        self._check_tuning_names()
        self._check_claims_names()

    def _check_tuning_names(self) -> None:
        for family in self.tuned_families:
            self._known("tuning.grids", family)
        for m in self.tuning.get("models", []):
            self._known("tuning.models", m, self.methods, "method")
        for a, entry in self.settings.items():
            if entry.get("tuned") and a not in self.tuned_families:
                raise ValueError(f"config key evaluation.attacks.{a}.tuned: no grid for {a!r} under tuning.grids")
        for m, entry in self.config["methods"].items():
            if entry.get("tuned") and entry.get("attack") not in self.tuned_families:
                raise ValueError(f"config key methods.{m}.tuned: no tuning grid for its attack {entry.get('attack')!r}"
                                 f" under tuning.grids (grids: {self.tuned_families})")

    def _check_claims_names(self) -> None:
        claims = self.evaluation.get("claims") or {}
        for pair in claims.get("attack_pairs", []):
            for a in pair:
                self._known("evaluation.claims.attack_pairs", a.split(":")[0])
        at_methods = claims.get("eroseg_at") or []
        for m in ([at_methods] if isinstance(at_methods, str) else list(at_methods)) + list(claims.get("at_baselines",
                                                                                                       [])):
            if m is not None:
                self._known("evaluation.claims", m, self.methods, "method")

    def check_budget_params(self) -> None:
        """eps and steps come from where a setting runs (headline, sweep, checks; its own ``steps`` key), and name
        its result files: a setting's own ``params.eps`` / ``params.steps`` or a tuning grid over them is refused
        rather than overwritten or laid over a file that names another budget."""
        where_eps = "evaluation.headline.eps, evaluation.sweep.eps or evaluation.checks.eps"
        for a, entry in self.settings.items():
            params = entry.get("params") or {}
            if "eps" in params:
                raise ValueError(f"config key evaluation.attacks.{a}.params.eps: a setting runs at the eps of the "
                                 f"table it serves ({where_eps}), which would overwrite {params['eps']!r}; remove it "
                                 "and list that eps there")
            if "steps" in params:
                raise ValueError(f"config key evaluation.attacks.{a}.params.steps: would be overwritten by the "
                                 f"headline or sweep steps; fix this setting's steps with evaluation.attacks.{a}."
                                 f"steps: {params['steps']!r} instead")
        for family, grid in (self.tuning.get("grids") or {}).items():
            for key in ("eps", "steps"):
                if key in grid:
                    raise ValueError(f"config key tuning.grids.{family}.{key}: {key} is fixed by the evaluation, not "
                                     "tuned (it names the result files); tune the attack's other parameters")

    def check_min_norm(self) -> None:
        """The ``evaluation.min_norm`` block: known attacks, parameters, norms, methods, an eps grid in (0, 1]."""
        from eroseg.minnorm.catalog import attack_arguments

        if not self.min_norm:
            return
        block = self.min_norm
        for name, entry in block["attacks"].items():
            entry = entry or {}
            try:
                attack_arguments(entry.get("attack", name), block["norm"], float(block["adv_threshold"]),
                                 entry.get("steps"), dict(entry.get("params") or {}))
            except ValueError as err:
                raise ValueError(f"config key evaluation.min_norm.attacks.{name}: {err}") from None
        for m in block["methods"] or []:
            self._known("evaluation.min_norm.methods", m, self.methods, "method")
        self.min_norm_eps()

    def check_tune_split(self) -> None:
        """The split ``tune`` exists only when ``dataset.tune_size`` carves it, and is never the reported split."""
        dataset = self.dataset
        if dataset["test_split"] == "tune":
            raise ValueError("config key dataset.test_split: 'tune' is the list carved for the choices (tuning, "
                             "the per-epoch log), never reported; report on the dataset's val or test split")
        if dataset["val_split"] == "tune" and not dataset.get("tune_size"):
            raise ValueError("config key dataset.val_split: 'tune' needs dataset.tune_size > 0 (the images carved "
                             "out of dataset.train_split as that split); set tune_size or choose on another split")

    # ------------------------------------------------------------------ data options of the jobs
    def tune_list_path(self) -> str | None:
        """The carved tune list the prepare stage writes (``dataset.tune_size`` > 0), else None."""
        return f"{self.split_lists_dir()}/tune.csv" if self.dataset.get("tune_size") else None

    def split_lists_dir(self) -> str:
        """The folder of carved split lists, beside the data manifest (eroseg.data.splits)."""
        return f"{self.out}/data/splits"

    def data_inputs(self) -> list[str]:
        """What a job reading the data needs besides the dataset: the tune list when there is one."""
        return [self.tune_list_path()] if self.tune_list_path() else []

    def prepare_tune_option(self) -> str:
        """The prepare command's tune options (`` --tune-from ...``, shell-quoted), or empty without a tune list."""
        if not self.tune_list_path():
            return ""
        dataset = self.dataset
        return (f" --tune-from {shlex.quote(dataset['train_split'])} --tune-size {int(dataset['tune_size'])}"
                f" --tune-seed {int(dataset.get('tune_seed', 0))}{self.split_lists_option()}")

    def split_lists_option(self) -> str:
        """`` --split-lists DIR`` (shell-quoted) for the jobs that read the data, or empty without a tune list."""
        return f" --split-lists {shlex.quote(self.split_lists_dir())}" if self.tune_list_path() else ""

    def inference_option(self) -> str:
        """`` --inference JSON`` (shell-quoted) of ``evaluation.inference``, or empty for whole-image inference."""
        inference = self.evaluation.get("inference") or {}
        if inference.get("mode", "whole") == "whole":
            return ""
        return f" --inference {shlex.quote(json_arg(inference))}"

    # ------------------------------------------------------------------ paths
    def data_root(self, environ=os.environ) -> str:
        """The dataset's root: the generated one for ``synthetic``, else ``dataset.root`` with ~ and $VARS expanded."""
        if self.synthetic:
            return f"{self.out}/data/synthetic"
        root = self.dataset.get("root")
        if not root:
            raise ValueError(f"config key dataset.root: required for dataset {self.dataset['name']!r} "
                             "(path to its root)")
        if re.search(r"\$\(|`", root):
            raise ValueError(f"config key dataset.root: {root!r} holds a shell command ($(...) or `...`), "
                             "which is never run; give the folder's path (~ and $VARS are expanded)")
        unset = [m.group(0) for m in re.finditer(r"\$(\w+)|\$\{(\w+)\}", root)
                 if (m.group(1) or m.group(2)) not in environ]
        if unset:
            raise ValueError(f"config key dataset.root: {root!r} names the environment variable "
                             f"{unset[0]}, which is not set; set it or give the folder's path")
        return os.path.expandvars(os.path.expanduser(root))

    def manifest_path(self) -> str:
        return f"{self.out}/data/manifest.csv"

    def frequencies_path(self) -> str:
        return f"{self.out}/data/class_frequencies.csv"

    def model_path(self, method, seed) -> str:
        return f"{self.out}/models/{method}/seed{seed}/model.pt"

    def train_log_path(self, method, seed) -> str:
        """The per-epoch training log (CSV) beside the model."""
        return f"{self.out}/models/{method}/seed{seed}/log.csv"

    def eval_dir(self, method, seed) -> str:
        return f"{self.out}/eval/{method}/seed{seed}"

    def eval_shard_dir(self, method, seed, index) -> str:
        """The folder of one shard's evaluation (``evaluation.shards`` > 1), merged into :meth:`eval_dir`."""
        return f"{self.out}/eval_shards/{method}/seed{seed}/shard{index}of{self.shards}"

    def eval_shard_dirs(self, method, seed) -> list[str]:
        """The shard folders of one model's evaluation, in shard order."""
        return [self.eval_shard_dir(method, seed, i) for i in range(self.shards)]

    def eval_file(self, method, seed, setting, eps, steps) -> str:
        return f"{self.eval_dir(method, seed)}/{setting}/eps{eps}_steps{steps}.json"

    def samples_path(self, suffix: str = ".npz") -> str:
        """The sample images of the qualitative figure (``.npz``) or their evaluation record (``.json``)."""
        samples = self.evaluation["samples"]
        return f"{self.out}/samples/{samples['method']}_seed{self.seeds[0]}_{samples['attack']}{suffix}"

    def tuning_path(self, family) -> str:
        return f"{self.out}/tuning/{family}.json"

    def benchmark_path(self, rule: str, job: str) -> str:
        """Snakemake's record of one job's wall time (``benchmark:``), read by the timings table."""
        return f"{self.out}/benchmarks/{rule}/{job}.tsv"

    def log_path(self, name: str) -> str:
        """A job's log: ``name`` is ``<rule>`` or ``<rule>/<job>``."""
        return f"{self.out}/logs/{name}.log"

    def min_norm_path(self, method, seed, setting) -> str:
        """The record of one minimal-norm run (:func:`eroseg.minnorm.evaluate_min_norm`, method/seed/setting added)."""
        return f"{self.out}/min_norm/{method}/seed{seed}/{setting}.json"

    def tables_dir(self) -> str:
        return f"{self.out}/tables"

    def figures_dir(self) -> str:
        return f"{self.out}/figures"

    # ------------------------------------------------------------------ what runs
    def seeds_of(self, method) -> list[int]:
        """Seeds a method is evaluated with: every seed for a trained method (one model per seed); the first for
        an external one, which is one model (its seed is the attacks' random start)."""
        return self.seeds[:1] if method in self.external else self.seeds

    def steps_of(self, setting, steps) -> int:
        """Steps of a setting in a grid of ``steps``: 1 for single-step attacks (the registry says which, e.g.
        FGSM), else the setting's own ``steps`` if the config fixes them (e.g. SEA's iterations), else ``steps``."""
        if not self.registered(self.settings[setting]["attack"])["uses_steps"]:
            return 1
        return int(self.settings[setting].get("steps") or steps)

    def _sweep_grid(self) -> list[tuple[float, int]]:
        """(eps, steps) of the sweep: the full grid, or steps at the headline eps and eps at the headline steps."""
        sweep = self.evaluation["sweep"]
        eps_list = [self.parse(e, key="evaluation.sweep.eps") for e in sweep["eps"]]
        if sweep.get("full_grid"):
            return [(e, st) for e in eps_list for st in sweep["steps"]]
        return [(self.head_eps, st) for st in sweep["steps"]] + [(e, self.head_steps) for e in eps_list]

    def model_settings(self, method, seed) -> list[tuple[str, str, int]]:
        """Every (setting, eps tag, steps) evaluated on one model, without duplicates."""
        evaluation, head = self.evaluation, eps_tag(self.head_eps)
        out = {(a, head, self.steps_of(a, self.head_steps))
               for a in evaluation["main_attacks"] + ([self.sea] if self.sea else [])}
        checks = self.checks
        if checks and (checks["seeds"] == "all" or seed == self.seeds[0]):
            out |= {(checks["setting"], eps_tag(e), int(checks["steps"])) for e in self.check_eps}
            if checks.get("restarts"):
                out.add((checks["restarts"], head, self.steps_of(checks["restarts"], self.head_steps)))
        if method == evaluation["sweep"]["method"] and seed == self.seeds[0]:
            out |= {(a, eps_tag(e), self.steps_of(a, st)) for a in evaluation["sweep"]["attacks"]
                    for e, st in self._sweep_grid()}
        if method == evaluation["ablation"]["method"]:
            out |= {(a, head, self.steps_of(a, self.head_steps)) for a in evaluation["ablation"]["variants"].values()}
        return sorted(out)

    def attack_params(self, setting, eps_tag_value, steps) -> dict:
        """Parameters of one evaluation: the setting's params plus eps, steps, step_size and best_iterate."""
        entry = self.settings[setting]
        accepted = self.registered(entry["attack"])["parameters"]
        params = dict(entry.get("params") or {})
        eps = float(eps_tag_value) / 255
        params["eps"] = eps
        params["steps"] = int(steps)
        if "step_size" in accepted:
            params["step_size"] = self.parse(params.get("step_size", self.evaluation["step_size"]), eps,
                                             key=f"evaluation.attacks.{setting}.params.step_size")
        if "best_iterate" in accepted:
            params.setdefault("best_iterate", bool(self.evaluation["best_iterate"]))
        return params

    def samples_params(self) -> dict:
        """The attack parameters of the sample images: the samples' setting at the headline."""
        setting = self.evaluation["samples"]["attack"]
        return self.attack_params(setting, eps_tag(self.head_eps), self.steps_of(setting, self.head_steps))

    def size_settings(self) -> set[tuple[str, str, int]]:
        """The (setting, eps tag, steps) whose evaluations keep object summaries: the worst case's settings at the
        headline (empty when ``evaluation.size`` is off); the clean evaluation keeps them too."""
        if self.size_connectivity is None:
            return set()
        head = eps_tag(self.head_eps)
        return {(s, head, self.steps_of(s, self.head_steps)) for s in self.report_spec().worst_case_settings()}

    def evaluation_settings(self, method, seed) -> list[dict]:
        """The ``--settings`` list of one model's evaluation job (clean first)."""
        objects = {} if self.size_connectivity is None else {"objects": {"connectivity": self.size_connectivity}}
        items = [{"setting": "clean", "attack": "none", "out": f"{self.eval_dir(method, seed)}/clean.json", **objects}]
        with_objects = self.size_settings()
        for setting, tag, steps in self.model_settings(method, seed):
            entry = self.settings[setting]
            item = {"setting": setting, "attack": entry["attack"], "params": self.attack_params(setting, tag, steps),
                    "restarts": int(entry.get("restarts", 1)),
                    "out": self.eval_file(method, seed, setting, tag, steps)}
            if entry.get("tuned"):
                item["params_file"] = self.tuning_path(setting)
            if (setting, tag, steps) in with_objects:
                item.update(objects)
            items.append(item)
        return items

    def shard_settings(self, method, seed, index) -> list[dict]:
        """The ``--settings`` list of shard ``index`` of one model's evaluation: :meth:`evaluation_settings` with
        every output in the shard's folder at the same relative path."""
        folder, shard_folder = self.eval_dir(method, seed), self.eval_shard_dir(method, seed, index)
        return [{**item, "out": shard_folder + item["out"][len(folder):]}
                for item in self.evaluation_settings(method, seed)]

    def tuning_inputs_of_eval(self, method, seed) -> list[str]:
        return sorted({i["params_file"] for i in self.evaluation_settings(method, seed) if "params_file" in i})

    def tuning_base_params(self, family) -> dict:
        """Parameters every tuning candidate of ``family`` shares: the setting's own at the headline eps, tuning
        steps."""
        return self.attack_params(family, eps_tag(self.head_eps), int(self.tuning["steps"]))

    def training_tuning_file(self, method) -> str | None:
        """The tuning result a method's training attack takes its parameters from (``tuned: true``), or None."""
        entry = self.config["methods"][method]
        return self.tuning_path(entry["attack"]) if entry.get("tuned") else None

    def training_attack(self, method) -> tuple[str | None, dict]:
        """The attack a method trains with and its parameters (``None, {}`` for standard training)."""
        entry = self.config["methods"][method]
        if not entry.get("attack"):
            return None, {}
        training = self.config["adversarial_training"]
        eps = self.parse(training["eps"], key="adversarial_training.eps")
        params = {"eps": eps, "steps": int(training["steps"]),
                  "step_size": self.parse(training["step_size"], eps, key="adversarial_training.step_size")}
        params.update(entry.get("params") or {})
        return entry["attack"], params

    def training_objective(self, method) -> dict:
        """``methods.<m>.objective`` (default: adversarial training with the method's attack); an objective that
        makes its own examples (any but ``adversarial``) gets adversarial_training's eps, step_size and steps
        unless it sets its own."""
        objective = dict(self.config["methods"][method].get("objective") or {"name": "adversarial"})
        if objective["name"] == "adversarial":
            return objective
        training = self.config["adversarial_training"]
        return {"name": objective["name"], **{k: training[k] for k in ("eps", "step_size", "steps")}, **objective}

    def attacks_to_check(self) -> list[tuple[str, str, dict]]:
        """(config key, attack, parameters) of every attack the config builds, each once."""
        seen, out = set(), []
        for m in self.methods:
            for s in self.seeds:
                for item in self.evaluation_settings(m, s)[1:]:
                    key = (item["setting"], json.dumps(item["params"], sort_keys=True))
                    if key not in seen:
                        seen.add(key)
                        out.append((f"evaluation.attacks.{item['setting']}", item["attack"],
                                    resolve_attack_params(item["params"])))
        for family in self.tuned_families:
            for candidate in grid_candidates(self.tuning["grids"][family]):
                out.append((f"tuning.grids.{family}: candidate {candidate}", self.settings[family]["attack"],
                            resolve_attack_params({**self.tuning_base_params(family), **candidate})))
        for m in self.methods:
            name, params = self.training_attack(m)
            if name:
                out.append((f"methods.{m}", name, params))
        return out

    # ------------------------------------------------------------------ minimal-norm runs
    def min_norm_eps(self) -> list[float]:
        """The eps grid of the minimal-norm runs, sorted, with the headline eps added (the worst case's candidate)."""
        grid = {self.parse(e, key="evaluation.min_norm.eps") for e in self.min_norm["eps"]}
        return sorted(grid | {self.head_eps})

    def min_norm_jobs(self) -> list[tuple[str, int, str]]:
        """Every (method, seed, setting) of a minimal-norm run (none without ``evaluation.min_norm``)."""
        if not self.min_norm:
            return []
        block = self.min_norm
        methods = block["methods"] or self.methods
        return [(m, s, a) for m in methods
                for s in (self.seeds_of(m) if block["seeds"] == "all" else self.seeds_of(m)[:1])
                for a in block["attacks"]]

    def min_norm_files(self) -> list[str]:
        return [self.min_norm_path(m, s, a) for m, s, a in self.min_norm_jobs()]

    def min_norm_args(self, setting) -> dict:
        """The arguments of one setting's ``eroseg min-norm`` job (its attack, steps, params, norm, eps grid...)."""
        block, entry = self.min_norm, self.min_norm["attacks"][setting] or {}
        return {"attack": entry.get("attack", setting), "steps": entry.get("steps"),
                "params": dict(entry.get("params") or {}), "norm": block["norm"],
                "adv_threshold": float(block["adv_threshold"]), "eps": self.min_norm_eps(),
                "max_images": block["max_images"],
                "batch_size": int(block["batch_size"] or self.evaluation["batch_size"])}

    def min_norm_options(self, setting) -> str:
        """The ``eroseg min-norm`` options of one setting, quoted for a shell (besides model, data and output)."""
        args = self.min_norm_args(setting)
        words = ["--attack", args["attack"], "--setting", setting, "--params", json_arg(args["params"]),
                 "--eps", *[repr(e) for e in args["eps"]], "--norm", args["norm"],
                 "--adv-threshold", repr(args["adv_threshold"]), "--batch-size", str(args["batch_size"])]
        words += ["--steps", str(args["steps"])] if args["steps"] else []
        words += ["--max-images", str(args["max_images"])] if args["max_images"] else []
        if self.size_connectivity is not None:
            words += ["--objects-eps", repr(self.head_eps), "--connectivity", str(self.size_connectivity)]
        return " ".join(shlex.quote(w) for w in words)

    def min_norm_report(self) -> dict | None:
        """The report spec's ``min_norm`` block: the eps grid and the records (None without ``evaluation.min_norm``)."""
        return {"eps": self.min_norm_eps(), "files": self.min_norm_files()} if self.min_norm else None

    # ------------------------------------------------------------------ the report
    def report_spec(self) -> ReportSpec:
        """What the tables and figures show (:class:`eroseg.report.spec.ReportSpec`)."""
        evaluation, checks, first = self.evaluation, self.checks, self.seeds[0]
        head = {"eps": self.head_eps, "steps": self.head_steps}
        steps_of = {a: self.steps_of(a, self.head_steps) for a in self.settings}
        return ReportSpec.from_dict({
            "methods": self.methods, "headline": head, "attacks": evaluation["main_attacks"],
            "steps_of": {a: s for a, s in steps_of.items() if s != self.head_steps},
            "sea": self.sea, "sea_plus": evaluation.get("sea_plus") or [],
            "worst_case": evaluation.get("worst_case") or [], "worst_case_rule": evaluation["worst_case_rule"],
            "checks": {**checks, "eps": self.check_eps,
                       "seeds": self.seeds if checks["seeds"] == "all" else [first]} if checks else None,
            "claims": claims_options(evaluation.get("claims")) or None,
            "sweep": {"method": evaluation["sweep"]["method"], "attacks": evaluation["sweep"]["attacks"]},
            "ablation": {"method": evaluation["ablation"]["method"],
                         "attacks": [[k, v] for k, v in evaluation["ablation"]["variants"].items()]},
            "tuning": self.tuned_families, "timings": True, "min_norm": self.min_norm_report(),
            "size": self.size_connectivity is not None,
            "dataset": self.dataset["name"], "dpi": self.config["figures"]["dpi"],
            "per_class": {"method": evaluation["sweep"]["method"], "attacks": evaluation["main_attacks"],
                          "seed": first},
            "samples": {"method": evaluation["samples"]["method"], "attack": evaluation["samples"]["attack"],
                        **head},
        })

    def aggregate_spec(self) -> dict:
        """The spec of the aggregate rule: the report spec without what only the figures read."""
        return self.report_spec().to_dict(tables_only=True)

    def figure_spec(self) -> dict:
        return self.report_spec().to_dict()

    def report_tables(self, registry: dict[str, ReportItem] | None = None) -> list[ReportItem]:
        """The tables this config's report has (:data:`eroseg.report.TABLES` by default)."""
        return enabled(TABLES if registry is None else registry, self.report_spec())

    def report_figures(self, registry: dict[str, ReportItem] | None = None) -> list[ReportItem]:
        """The figures this config's report has (:data:`eroseg.report.FIGURES` by default)."""
        return enabled(FIGURES if registry is None else registry, self.report_spec())

    def table_files(self, registry=None, formats=TABLE_FORMATS) -> list[str]:
        return [f"{self.tables_dir()}/{t.name}.{ext}" for t in self.report_tables(registry) for ext in formats]

    def figure_files(self, registry=None, formats=FIGURE_FORMATS) -> list[str]:
        return [f"{self.figures_dir()}/{f.name}.{ext}" for f in self.report_figures(registry) for ext in formats]

    # ------------------------------------------------------------------ output lists
    def all_eval_dirs(self) -> list[str]:
        return [self.eval_dir(m, s) for m in self.methods for s in self.seeds_of(m)]

    def all_outputs(self, tables=None, figures=None) -> list[str]:
        """Every file the workflow's default target asks for (``tables``/``figures``: other registries)."""
        return ([self.manifest_path()]
                + [self.tuning_path(f) for f in self.tuned_families]
                + [self.model_path(m, s) for m in self.methods for s in self.seeds_of(m)]
                + self.all_eval_dirs()
                + self.table_files(tables)
                + self.figure_files(figures))

    def training_logs(self) -> list[str]:
        """The training logs the figures read (external models have none)."""
        return [self.train_log_path(m, s) for m in self.trained for s in self.seeds]

    def benchmark_files(self) -> list[str]:
        """Per-job wall times Snakemake records (``benchmark:``) for the timings table."""
        return ([self.benchmark_path("train", f"{m}_seed{s}") for m in self.trained for s in self.seeds]
                + [self.benchmark_path(*job) for m in self.methods for s in self.seeds_of(m)
                   for job in self.evaluation_benchmark_jobs(m, s)]
                + [self.benchmark_path("tune", f) for f in self.tuned_families]
                + [self.benchmark_path("min_norm", f"{m}_seed{s}_{a}") for m, s, a in self.min_norm_jobs()])

    def evaluation_benchmark_jobs(self, method, seed) -> list[tuple[str, str]]:
        """(rule, job) of the benchmark files of one model's evaluation: one job, or one per shard."""
        if self.shards == 1:
            return [("evaluate", f"{method}_seed{seed}")]
        return [("evaluate_shard", f"{method}_seed{seed}_shard{i}of{self.shards}") for i in range(self.shards)]


# ---------------------------------------------------------------------- the attack registry, cached
def _cache_write(path: Path, text: str) -> None:
    try:  # a read-only working folder only costs the cache
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        pass


def attack_registry(cache_dir: Path, source_key: str) -> dict[str, dict]:
    """Per registered attack: whether it takes ``steps`` and its parameter names, in registration order.

    Importing the registry imports torch (seconds), which every dry run and every Snakemake inside a SLURM job
    would pay again: the summary is cached in ``cache_dir``, keyed by ``source_key`` (a hash of the source of
    eroseg.attacks and eroseg.numbers). Nothing in it depends on the working folder, so runs may share one.
    """
    path = Path(cache_dir) / f"registry-{source_key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    from eroseg.attacks import ATTACKS as registered
    from eroseg.attacks import attack_parameters, attack_uses_steps

    info = {name: {"uses_steps": attack_uses_steps(name), "parameters": sorted(attack_parameters(name))}
            for name in registered}
    _cache_write(path, json.dumps(info))
    return info


def check_attack_params(plan: EvaluationPlan, cache_dir: Path, source_key: str) -> None:
    """Every attack setting is built once, and ``evaluation.inference`` checked, so a bad parameter fails before
    any model is trained.

    A set of settings that passed is remembered (in ``cache_dir``, with the registry's source key), so an
    unchanged config is not checked, and torch not imported, again."""
    todo = plan.attacks_to_check()
    inference = plan.evaluation.get("inference")
    digest = hashlib.sha256(json.dumps([source_key, todo, inference], sort_keys=True,
                                       default=str).encode()).hexdigest()
    marker = Path(cache_dir) / f"checked-{digest[:24]}"
    if marker.exists():
        return
    from eroseg.attacks import create_attack
    from eroseg.inference import inference_spec

    inference_spec(inference)  # a bad mode, crop or stride: one line naming its key

    for key, name, params in todo:
        try:
            create_attack(name, **params)
        except (TypeError, ValueError) as err:
            raise ValueError(f"config key {key}: {err}") from None
    _cache_write(marker, "ok\n")


# ---------------------------------------------------------------------- shell arguments
def json_arg(obj) -> str:
    """JSON for a shell argument (quoted with :q where a rule uses it)."""
    return json.dumps(obj, sort_keys=True)


class _FlowDumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # a list used twice is written twice, not as &id001 / *id001
        return True


def flow_arg(obj) -> str:
    """YAML flow style (``{methods: [standard, pgd_at], ...}``) for a shell argument, for the params the
    report shows: Snakemake's report escapes every double quote of a JSON param (``{\\"methods\\": ...}``).
    Budgets are written as fractions (``eps: 8/255``); the package reads them back (eroseg.numbers)."""
    obj = budgets_as_text(obj)
    return yaml.dump(obj, Dumper=_FlowDumper, default_flow_style=True, sort_keys=False, width=float("inf")).strip()
