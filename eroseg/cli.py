"""The ``eroseg`` command line: one subcommand per pipeline stage.

Snakemake rules call these subcommands through ``shell:`` and pass every
hyper-parameter on the command line (nested settings as JSON), so the package
never reads the workflow's config file and a rule's ``params`` are exactly
what the command receives.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
from pathlib import Path

from eroseg.numbers import parse_number, resolve_attack_params  # noqa: F401  (re-exported)

log = logging.getLogger("eroseg")


def _json_arg(text: str, what: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        # YAML's flow style ({a: [b, c]}) is accepted too: the workflow passes the table and figure
        # specs that way, which Snakemake's report shows without the escaped quotes of JSON.
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise SystemExit(f"eroseg: {what} is not valid JSON (nor YAML): {err}: {text!r}") from err
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SystemExit(f"eroseg: {what} must be a JSON object, got {text!r}")
    return value


def _setup(args) -> None:
    logging.basicConfig(
        level=logging.INFO if not getattr(args, "quiet", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    threads = getattr(args, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _make_attack(name: str | None, params: dict, extra: dict | None = None):
    if not name or name == "none":
        return None
    from eroseg.attacks import create_attack

    return create_attack(name, **resolve_attack_params({**params, **(extra or {})}))


def _dataset(name: str, root: str, split: str, **kwargs):
    from eroseg.data import get_dataset

    return get_dataset(name, os.path.expandvars(os.path.expanduser(root)), split, **kwargs)


def load_model_factory(spec: str, *, dataset: str | None = None, device="cpu"):
    """Build a model from a Python entry point ``module:function`` (``--model-factory``).

    The function is called without arguments and returns an ``nn.Module`` or
    ``(module, meta)``. ``meta`` may hold ``num_classes``, ``classes``,
    ``dataset``, ``method``, ``seed`` (recorded like a checkpoint's metadata)
    and the :func:`eroseg.models.wrap_model` options ``mean``, ``std``,
    ``output_key``, ``pad_multiple``. The module is wrapped with ``wrap_model``
    unless it already is a wrapped model. ``module`` may also be a path to a
    ``.py`` file; the current directory is searched after ``sys.path``.

    This runs code: the module is imported (its top-level code runs) and the
    function called, with the caller's permissions; to find ``module`` the
    current directory is appended to ``sys.path`` (for the rest of the
    process), so a ``module.py`` lying in it is imported.

    Args:
        spec: ``"package.module:function"`` or ``"path/to/file.py:function"``.
        dataset: dataset name; gives ``num_classes`` and ``classes`` when ``meta`` lacks them.
        device: where the model is moved.

    Returns:
        ``(wrapped model in eval mode, meta)``.

    Raises:
        ValueError: malformed spec, module or function not found, or a factory
            that returns something else than a module (the message names the spec).
    """

    from eroseg.external import import_factory, split_factory_output
    from eroseg.models import SegmentationModel, wrap_model

    where = f"--model-factory {spec!r}"
    factory = import_factory(spec, where)
    func_name = str(spec).rpartition(":")[2]
    built, meta = split_factory_output(factory(), f"{where}: the factory")
    wrap_opts = {k: meta.pop(k) for k in ("mean", "std", "output_key", "pad_multiple") if k in meta}
    if dataset and "num_classes" not in meta:
        from eroseg.data import dataset_info

        info = dataset_info(dataset)
        meta["num_classes"] = info.num_classes
        meta.setdefault("classes", list(info.classes))
    meta.setdefault("method", func_name)
    meta.setdefault("seed", 0)
    if isinstance(built, SegmentationModel):
        model = built
    else:
        model = wrap_model(built, num_classes=meta.get("num_classes"), **wrap_opts)
    return model.to(device).eval(), meta


def _model_arg(args, device):
    """The model of ``--checkpoint`` or ``--model-factory`` as ``(model, meta)``."""
    if args.model_factory:
        return load_model_factory(args.model_factory, dataset=args.dataset, device=device)
    from eroseg.models import load_model

    return load_model(args.checkpoint, map_location=device)


# --------------------------------------------------------------------- commands
def cmd_synthesize(args) -> None:
    from eroseg.data import generate_synthetic

    generate_synthetic(
        args.root, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, height=args.height,
        width=args.width, seed=args.seed,
    )


def cmd_prepare(args) -> None:
    from eroseg.data import prepare_dataset

    prepare_dataset(
        args.dataset, os.path.expandvars(os.path.expanduser(args.root)), args.splits,
        manifest_path=args.manifest, frequencies_path=args.frequencies, max_pixels=args.max_pixels,
    )


def cmd_train(args) -> None:
    from eroseg.training import run_training_job

    attack_params = _tuned(_json_arg(args.attack_params, "--attack-params"), args.attack_params_file)
    objective = _json_arg(args.objective, "--objective")
    run_training_job(
        dataset=args.dataset, root=args.root, train_split=args.train_split, val_split=args.val_split,
        model_cfg=_json_arg(args.model, "--model"), train_settings=_json_arg(args.train, "--train"),
        objective=objective, method=args.method or default_method(args.attack, objective),
        attack=args.attack, attack_params=attack_params, robust_eps=args.robust_eps,
        robust_step_size=args.robust_step_size, seed=args.seed, device=args.device, out=args.out, log=args.log,
        progress=not args.quiet,
    )


def cmd_import_model(args) -> None:
    import torch

    from eroseg.data import dataset_info
    from eroseg.external import build_external
    from eroseg.io import check_writable_dir
    from eroseg.models import save_checkpoint

    where = args.config_key or "--factory/--weights/--options"
    entry = {**_json_arg(args.options, "--options"), "factory": args.factory}
    if args.weights:
        entry["weights"] = args.weights
    check_writable_dir(args.out, "checkpoint (--out)")
    info = dataset_info(args.dataset)
    model, built = build_external(entry, num_classes=info.num_classes, where=where)
    classes = int(built["num_classes"] or info.num_classes)
    if classes != info.num_classes or built.get("dataset") not in (None, args.dataset):
        raise ValueError(f"{where}: the model is for {built.get('dataset') or 'a dataset'} with {classes} classes, "
                         f"but the data is {args.dataset} with {info.num_classes} classes")
    model.num_classes, declared = None, model.num_classes  # the channels are compared below, with the data's
    try:  # a forward pass now, so that a model whose output eroseg cannot read fails here, named
        with torch.no_grad():
            out = model(torch.rand(1, 3, 64, 64))
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"{where}: a forward pass of the model on a [1, 3, 64, 64] image failed: {err}") from None
    model.num_classes = declared
    if out.shape[1] != classes:
        raise ValueError(f"{where}: the model returns {out.shape[1]} channels; the data has {classes} classes")
    meta = {**built, "num_classes": classes, "classes": list(built.get("classes") or info.classes),
            "dataset": args.dataset, "method": args.method, "seed": args.seed, "weights_file": args.weights or None}
    save_checkpoint(args.out, model, meta)
    log.info("%s: %s%s -> %s (%d classes)", args.method, args.factory,
             f" with {args.weights}" if args.weights else "", args.out, classes)


def default_method(attack: str | None, objective: dict | None = None) -> str:
    """Method stored by ``eroseg train`` without ``--method``: ``standard``, ``<attack>_at`` or ``<objective>_at``."""
    name = (objective or {}).get("name", "adversarial")
    if name != "adversarial":
        return f"{name}_at"
    return "standard" if attack in (None, "", "none") else f"{attack}_at"


def _settings(args) -> list[dict]:
    """The attack settings of one ``eroseg evaluate`` call: ``--settings`` JSON, or the single-setting flags."""
    if args.settings:
        if args.out or args.attack or args.samples:
            raise ValueError("--settings replaces --out/--attack/--attack-params/--setting; --samples needs a "
                             "single setting")
        try:
            items = json.loads(args.settings)
        except json.JSONDecodeError as err:
            raise ValueError(f"--settings is not valid JSON: {err}") from None
        if not isinstance(items, list) or not items:
            raise ValueError("--settings must be a non-empty JSON list of {setting, attack, params, restarts, out}")
    else:
        if not args.out:
            raise ValueError("give --out (one setting) or --settings (several)")
        items = [{"setting": args.setting, "attack": args.attack, "params": _json_arg(args.attack_params,
                  "--attack-params"), "restarts": args.restarts, "out": args.out}]
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("out"):
            raise ValueError(f"--settings[{k}]: expected an object with at least 'out', got {item!r}")
        unknown = sorted(set(item) - {"setting", "attack", "params", "params_file", "restarts", "out"})
        if unknown:
            raise ValueError(f"--settings[{k}]: unknown key(s) {unknown}; valid: setting, attack, params, "
                             "params_file, restarts, out")
        attack = item.get("attack") or "none"
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"--settings[{k}].params must be a JSON object, got {params!r}")
        params = _tuned(params, item.get("params_file"))
        restarts = item.get("restarts", 1)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"--settings[{k}].restarts must be an integer >= 1, got {restarts!r}")
        out.append({"setting": item.get("setting") or ("clean" if attack == "none" else attack), "attack": attack,
                    "params": params, "restarts": restarts, "out": item["out"]})
    return out


def cmd_evaluate(args) -> None:
    from eroseg.data import dataset_info
    from eroseg.data.batching import check_pixel_budget
    from eroseg.device import select_device
    from eroseg.io import check_writable_dir, exclusive_lock, manifest_names, remove_stale_temps, write_eval_manifest
    from eroseg.models import check_checkpoint_matches

    settings = _settings(args)
    # Attack parameters and output folders are checked before the model and data are loaded.
    attacks = [_make_attack(s["attack"], s["params"], {"amp": args.amp}) for s in settings]
    for s in settings:
        check_writable_dir(s["out"], f"evaluation output of {s['setting']}")
    if args.manifest:
        manifest_names(args.manifest, [s["out"] for s in settings])
    device = select_device(args.device)
    model, meta = _model_arg(args, device)
    check_checkpoint_matches(meta, args.dataset, dataset_info(args.dataset).num_classes,
                             args.checkpoint or f"model factory {args.model_factory}")
    dataset = _dataset(args.dataset, args.root, args.split)
    check_pixel_budget(dataset, _max_pixels(args.max_pixels, device), args.max_images)
    with contextlib.ExitStack() as locks:  # one writer per output: a second evaluate on the same files fails at once
        for s in settings:
            locks.enter_context(exclusive_lock(s["out"]))
            remove_stale_temps(s["out"])  # left by a killed writer; the lock says none is alive
        for extra in (args.manifest, args.samples):
            if extra:
                remove_stale_temps(extra)
        _evaluate_settings(args, settings, attacks, model, meta, dataset, device)
        if args.manifest:  # last: a folder with a manifest holds a finished job's results
            write_eval_manifest(args.manifest, [s["out"] for s in settings])


def _evaluate_settings(args, settings, attacks, model, meta, dataset, device) -> None:
    import numpy as np

    from eroseg.evaluate import EvalRecord, evaluate
    from eroseg.io import atomic_path

    log.info("evaluating %d settings: %s", len(settings), ", ".join(s["setting"] for s in settings))
    for k, (s, attack) in enumerate(zip(settings, attacks), 1):
        res = evaluate(
            model, dataset, int(meta["num_classes"]), attack=attack, batch_size=args.batch_size, device=device,
            seed=args.seed, amp=args.amp, num_samples=args.samples_n if args.samples else 0,
            record_steps=args.record_steps, max_images=args.max_images, restarts=s["restarts"],
            components=attack is not None and s["attack"] == "sea",
        )
        record = EvalRecord(
            method=meta.get("method"), seed=meta.get("seed"), setting=s["setting"], attack=s["attack"],
            attack_params=resolve_attack_params(s["params"]) if attack is not None else {}, split=args.split,
            checkpoint=str(args.checkpoint) if args.checkpoint else f"factory:{args.model_factory}",
            classes=meta.get("classes"), per_image=res["per_image"],
            components=res["components"], restarts=s["restarts"], seconds=res["seconds"], **res["metrics"],
        )
        if args.samples:
            with atomic_path(args.samples) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, **res["samples"], **{f"step_{k}": v for k, v in res["steps"].items()})
        record.write(s["out"])
        # "setting k/N": the unit `eroseg status` counts for its progress and ETA
        log.info("setting %d/%d %s: mIoU %.4f pixel acc %.4f (%d images, %.1f s)", k, len(settings), record.setting,
                 record.miou, record.pixel_acc, record.num_images, record.seconds)


def cmd_attack(args) -> None:
    import csv
    import io

    from eroseg.data import dataset_info
    from eroseg.device import select_device
    from eroseg.export import SUMMARY_COLUMNS, attack_and_save, folder_images, load_image
    from eroseg.io import atomic_write_text, check_writable_dir
    from eroseg.models import check_checkpoint_matches

    if bool(args.images) == bool(args.dataset):
        raise ValueError("give either --images FOLDER or --dataset NAME --root ROOT (with --split)")
    if args.dataset and not args.root:
        raise ValueError("--dataset needs --root")
    summary = Path(args.out_dir) / "summary.csv"
    check_writable_dir(summary, "attack outputs (--out-dir)")
    device = select_device(args.device)
    model, meta = _model_arg(args, device)
    attack = _make_attack(args.attack, _json_arg(args.attack_params, "--attack-params"))
    if args.dataset:
        info = dataset_info(args.dataset)
        check_checkpoint_matches(meta, args.dataset, info.num_classes,
                                 args.checkpoint or f"model factory {args.model_factory}")
        ds = _dataset(args.dataset, args.root, args.split)
        n = len(ds) if args.max_images is None else min(args.max_images, len(ds))
        ids = getattr(ds, "ids", [f"{i:05d}" for i in range(len(ds))])
        items = [(str(ids[i]), lambda i=i: ds[i]) for i in range(n)]
    else:
        info = dataset_info(meta.get("dataset") or "synthetic")
        items = [(f.stem, lambda f=f: (load_image(f), None)) for f in folder_images(args.images)[: args.max_images]]
    rows = attack_and_save(model, items, attack, args.out_dir, info.palette, device=device, seed=args.seed,
                           max_pixels=_max_pixels(args.max_pixels, device), progress=not args.quiet)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(summary, buf.getvalue())
    skipped = [r["id"] for r in rows if r["skipped"]]
    if len(skipped) == len(rows):
        raise ValueError(f"{args.out_dir}: no image attacked; all {len(rows)} skipped (reasons in {summary})")
    log.info("attacked %d images -> %s%s", len(rows) - len(skipped), args.out_dir,
             f"; skipped {len(skipped)} (listed in {summary}): {', '.join(skipped[:5])}" if skipped else "")


def _max_pixels(value: int | None, device) -> int:
    """``--max-pixels``, or the default budget of the device's type (0: no budget)."""
    from eroseg.data.batching import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS.get(device.type, DEFAULT_MAX_PIXELS["cuda"]) if value is None else value


def _tuned(params: dict, path: str | None) -> dict:
    """``params`` with the parameters a tuning file chose laid over them."""
    if not path:
        return params
    from eroseg.io import read_json
    from eroseg.tune import TUNING_VERSION

    d = read_json(path)
    if not isinstance(d, dict) or d.get("version") != TUNING_VERSION or not isinstance(d.get("chosen"), dict):
        raise ValueError(f"{path}: not a tuning result (format {TUNING_VERSION} with a 'chosen' object); rerun the "
                         "tuning stage")
    return {**params, **d["chosen"]}


def cmd_tune(args) -> None:
    from eroseg.io import check_writable_dir, exclusive_lock, remove_stale_temps
    from eroseg.tune import grid_candidates

    base = _json_arg(args.attack_params, "--attack-params")
    grid = _json_arg(args.grid, "--grid")
    for cand in grid_candidates(grid):  # every candidate is checked before any model is loaded
        _make_attack(args.attack, {**base, **cand})
    check_writable_dir(args.out, "tuning result (--out)")
    with exclusive_lock(args.out):  # one writer: a second tune on the same output fails at once
        remove_stale_temps(args.out)
        _tune(args, base, grid)


def _tune(args, base: dict, grid: dict) -> None:
    from eroseg.device import select_device
    from eroseg.evaluate import evaluate
    from eroseg.io import write_json
    from eroseg.models import load_model
    from eroseg.tune import TUNING_VERSION, tune

    device = select_device(args.device)
    dataset = _dataset(args.dataset, args.root, args.split)
    models, num_classes = {}, None
    for path in args.checkpoints:
        model, meta = load_model(path, map_location=device)
        models[str(path)] = model
        num_classes = int(meta["num_classes"])

    def run(model, params):
        res = evaluate(model, dataset, num_classes, attack=_make_attack(args.attack, params, {"amp": args.amp}),
                       batch_size=args.batch_size, device=device, seed=args.seed, amp=args.amp,
                       max_images=args.max_images)
        return res["metrics"]["miou"]

    out = tune(models, run, base, grid)
    write_json(args.out, {"version": TUNING_VERSION, "family": args.family, "attack": args.attack,
                          "split": args.split, "max_images": args.max_images, "base": base, "grid": grid, **out})
    log.info("%s: chose %s (mean val mIoU %.4f over %d models)", args.family, out["chosen"],
             min(c["mean"] for c in out["candidates"]), len(models))


def _eval_files(paths: list[str]) -> list[str]:
    """Evaluation JSON files: files as given; a folder (one model's evaluations) gives the files its manifest
    lists (every one present), or without a manifest the non-hidden JSON under it
    (:func:`eroseg.io.eval_folder_files`)."""
    from eroseg.io import eval_folder_files

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(str(f) for f in eval_folder_files(p))
        else:
            out.append(str(p))
    return out


def _spec_arg(text: str) -> dict:
    """A table / figure spec (JSON or YAML flow style) with its budgets (``eps: 8/255``) as numbers."""
    from eroseg.numbers import budgets_as_numbers

    return budgets_as_numbers(_json_arg(text, "--spec"))


def cmd_aggregate(args) -> None:
    from eroseg.aggregate import aggregate

    aggregate(_eval_files(args.evals), _spec_arg(args.spec), args.out_dir, tuning_paths=args.tuning,
              benchmark_paths=args.benchmarks)


def cmd_status(args) -> None:
    from eroseg.status import format_status, run_status

    runs = args.runs or sorted(str(p.parent) for p in Path("results").glob("*/logs"))
    if not runs:
        raise FileNotFoundError("results/*/logs: no run has written job logs here; give a run folder "
                                "(eroseg status results/<run>) or start the workflow first")
    for run in runs:
        sys.stdout.write(format_status(run, run_status(run, stale_after=args.stale_after), args.all) + "\n")


def cmd_figures(args) -> None:
    from eroseg.figures import make_figures

    make_figures(
        evals=_eval_files(args.evals), logs=args.logs, samples=args.samples, steps=args.steps,
        spec=_spec_arg(args.spec), out_dir=args.out_dir,
    )


# ----------------------------------------------------------------------- parser
class _LazyChoices:
    """Choices read from a registry on first use, so that building the parser imports no torch.

    argparse only iterates ``choices`` to check a value or to print a
    subcommand's help; ``eroseg --help`` and the other subcommands stay fast.
    """

    def __init__(self, load, extra: tuple[str, ...] = ()):
        self._load, self._extra, self._names = load, extra, None

    def _get(self) -> list[str]:
        if self._names is None:
            self._names = [*self._extra, *self._load()]
        return self._names

    def __contains__(self, item) -> bool:
        return item in self._get()

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _attack_names() -> list[str]:
    from eroseg.attacks import ATTACKS

    return list(ATTACKS)


def _dataset_names() -> list[str]:
    from eroseg.data import DATASETS

    return sorted(DATASETS)


_NUMBER_HELP = "numbers as 0.03, '8/255' or (step_size only) 'eps/4'"


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low``, refused in argparse's one line otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _common_args(parser, threads=True) -> None:
    """Add ``--quiet`` and (``threads``) ``--threads`` to a subcommand's parser."""
    parser.add_argument("--quiet", action="store_true", help="log warnings only (no progress, no info lines)")
    if threads:
        parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                            help="torch CPU threads (default: torch's choice)")


def _dataset_args(parser, required=True) -> None:
    """Add ``--dataset`` and ``--root`` to a subcommand's parser."""
    parser.add_argument("--dataset", required=required, default=None, choices=_LazyChoices(_dataset_names),
                        metavar="NAME", help="dataset name: %(choices)s")
    parser.add_argument("--root", required=required, default=None, metavar="DIR",
                        help="dataset root folder, in the dataset's own layout (~ and $VARS expanded)")


def _model_args(parser) -> None:
    """Add the required choice of ``--checkpoint`` or ``--model-factory`` to a subcommand's parser."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--checkpoint", default=None, metavar="FILE", help="eroseg checkpoint (.pt) written by train")
    group.add_argument("--model-factory", default=None, metavar="MODULE:FUNCTION",
                       help="your own model instead of a checkpoint: a function returning an nn.Module or "
                            "(module, meta dict), e.g. mymodels:build or path/to/mymodels.py:build; the model "
                            "is wrapped with eroseg.models.wrap_model (see docs/own_model.md). This RUNS CODE: "
                            "MODULE is imported (its top-level code runs) and FUNCTION called, with your "
                            "permissions; the current folder is appended to sys.path to find MODULE, so name "
                            "only code you trust")


def _device_arg(parser) -> None:
    """Add ``--device`` to a subcommand's parser."""
    parser.add_argument("--device", default="auto",
                        help="auto (a free GPU if any, else CPU), cpu, cuda or cuda:N (default: %(default)s)")


def _add_synthesize_parser(sub) -> None:
    """The ``eroseg synthesize`` subcommand's parser."""
    parser = sub.add_parser("synthesize", help="generate the embedded synthetic dataset (PASCAL VOC layout)")
    parser.add_argument("--root", required=True, metavar="DIR", help="output folder of the dataset")
    parser.add_argument("--n-train", type=_positive_int, required=True, metavar="N", help="number of training images")
    parser.add_argument("--n-val", type=_positive_int, required=True, metavar="N",
                        help="validation images (the split for choices)")
    parser.add_argument("--n-test", type=_non_negative_int, default=0, metavar="N",
                        help="test images (the split whose numbers are reported; default: %(default)s, none)")
    parser.add_argument("--height", type=_positive_int, required=True, metavar="PX", help="image height in pixels")
    parser.add_argument("--width", type=_positive_int, required=True, metavar="PX", help="image width in pixels")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="generator seed; same seed, same files (default: %(default)s)")
    _common_args(parser, threads=False)
    parser.set_defaults(func=cmd_synthesize)


def _add_prepare_parser(sub) -> None:
    """The ``eroseg prepare`` subcommand's parser."""
    parser = sub.add_parser("prepare", help="validate a dataset; write its manifest and class frequencies")
    _dataset_args(parser)
    parser.add_argument("--splits", nargs="+", default=["train", "val"], metavar="SPLIT",
                        help="splits to validate (default: %(default)s)")
    parser.add_argument("--manifest", required=True, metavar="CSV", help="output: one row per sample")
    parser.add_argument("--frequencies", required=True, metavar="CSV",
                        help="output: pixel count and fraction per class")
    parser.add_argument("--max-pixels", type=_non_negative_int, default=16_000_000, metavar="N",
                        help="refuse, naming it, an image with more pixels (H x W) than this, the most a GPU "
                             "evaluates whole (default: %(default)s; 0: no budget)")
    _common_args(parser, threads=False)
    parser.set_defaults(func=cmd_prepare)


def _add_train_parser(sub) -> None:
    """The ``eroseg train`` subcommand's parser."""
    attacks_or_none = _LazyChoices(_attack_names, extra=("none",))
    parser = sub.add_parser("train", help="train one model (standard or adversarial); resumes if interrupted")
    _dataset_args(parser)
    parser.add_argument("--train-split", default="train", metavar="SPLIT", help="training split (default: %(default)s)")
    parser.add_argument("--val-split", default="val", metavar="SPLIT",
                        help="split of the per-epoch validation; empty string: none (default: %(default)s)")
    parser.add_argument("--model", default="{}", metavar="JSON",
                        help="model config as JSON (arch, encoder, encoder_weights, kwargs)")
    parser.add_argument("--train", default="{}", metavar="JSON",
                        help="training config as JSON (see eroseg.training.TrainConfig)")
    parser.add_argument("--objective", default="{}", metavar="JSON",
                        help="training objective as JSON, e.g. {\"name\": \"trades\", \"beta\": 6, \"eps\": \"8/255\", "
                             "\"step_size\": \"eps/4\", \"steps\": 3}; names: adversarial (default: adversarial "
                             "training with --attack), trades (see eroseg.training.tasks)")
    parser.add_argument("--method", default=None,
                        help="method name stored in the checkpoint (default: standard, or <attack>_at)")
    parser.add_argument("--attack", default=None, choices=attacks_or_none, metavar="NAME",
                        help="attack that makes the training examples: %(choices)s (none: standard training)")
    parser.add_argument("--attack-params", default="{}", metavar="JSON",
                        help=f"training attack parameters as JSON, e.g. {{\"eps\": \"8/255\", \"steps\": 3}}; "
                             f"{_NUMBER_HELP}")
    parser.add_argument("--attack-params-file", default=None, metavar="JSON",
                        help="tuning result (eroseg tune) whose chosen parameters are laid over --attack-params")
    parser.add_argument("--robust-eps", default=None, metavar="EPS",
                        help="eps of the per-epoch robust val check, e.g. 8/255 (default: no check)")
    parser.add_argument("--robust-step-size", default="eps/2", metavar="STEP",
                        help="PGD step size of that check (default: %(default)s; with 2 steps it reaches the eps "
                             "boundary; eps/4 left standard and adversarially trained models alike)")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="seed of initialisation and data order (default: %(default)s)")
    _device_arg(parser)
    parser.add_argument("--out", required=True, metavar="FILE", help="output checkpoint (.pt)")
    parser.add_argument("--log", required=True, metavar="CSV", help="output: one row of metrics per epoch")
    _common_args(parser)
    parser.set_defaults(func=cmd_train)


def _add_evaluate_parser(sub) -> None:
    """The ``eroseg evaluate`` subcommand's parser."""
    attacks_or_none = _LazyChoices(_attack_names, extra=("none",))
    parser = sub.add_parser("evaluate", help="evaluate a checkpoint or your own model, clean or under one attack")
    _model_args(parser)
    _dataset_args(parser)
    parser.add_argument("--split", default="val", metavar="SPLIT", help="split to evaluate (default: %(default)s)")
    parser.add_argument("--attack", default=None, choices=attacks_or_none, metavar="NAME",
                        help="attack: %(choices)s (default: none, i.e. clean)")
    parser.add_argument("--attack-params", default="{}", metavar="JSON",
                        help=f"attack parameters as JSON, e.g. {{\"eps\": \"8/255\", \"steps\": 20}}; {_NUMBER_HELP}")
    parser.add_argument("--setting", "--name", dest="setting", default=None,
                        help="label of this attack setting in tables (default: the attack name, or clean)")
    parser.add_argument("--restarts", type=_positive_int, default=1, metavar="N",
                        help="independent runs of the attack; per image the run with the lowest pixel accuracy is kept")
    parser.add_argument("--settings", default=None, metavar="JSON",
                        help="several settings in one process, as a JSON list of {setting, attack, params, "
                             "params_file, restarts, out} (replaces --attack/--attack-params/--setting/"
                             "--restarts/--out)")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="seed of the attack's random start (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                        help="images per batch (default: %(default)s)")
    parser.add_argument("--max-images", type=_positive_int, default=None, metavar="N",
                        help="evaluate the first N images only (default: all)")
    parser.add_argument("--max-pixels", type=_non_negative_int, default=None, metavar="N",
                        help="refuse, naming it, an image with more pixels (H x W) than this, before any work "
                             "(default: 4e6 on a CPU, 16e6 on a GPU; 0: no budget)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    parser.add_argument("--samples", default=None, metavar="NPZ", help="write qualitative examples (.npz) here")
    parser.add_argument("--samples-n", type=_positive_int, default=4, metavar="N",
                        help="number of examples in --samples (default: %(default)s)")
    parser.add_argument("--record-steps", action="store_true", help="record per-step attack masks into --samples")
    _device_arg(parser)
    parser.add_argument("--out", default=None, metavar="JSON",
                        help="output of the single setting: metrics (miou, pixel_acc, per_class_iou as fractions "
                             "in [0, 1]; tables show percent) and per-image counts")
    parser.add_argument("--manifest", default=None, metavar="JSON",
                        help="written last: the list of every output, relative to its folder, which must hold them "
                             "all; aggregate and figures then refuse that folder if one is missing")
    _common_args(parser)
    parser.set_defaults(func=cmd_evaluate)


def _add_import_model_parser(sub) -> None:
    """The ``eroseg import-model`` subcommand's parser."""
    parser = sub.add_parser(
        "import-model", help="build your own pretrained model with its factory and weights file and write it as an "
        "eroseg checkpoint (what the workflow does for methods.<name>.external); runs the factory's code")
    parser.add_argument("--factory", required=True, metavar="SPEC",
                        help="torchvision:BUILDER (e.g. torchvision:lraspp_mobilenet_v3_large), MODULE:FUNCTION or "
                             "path/to/file.py:FUNCTION; a module is imported (the current folder is searched after "
                             "sys.path) and a file executed: this runs that code")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="state dict loaded into the factory's model (.pt, .pth, .bin or .safetensors)")
    parser.add_argument("--options", default="{}", metavar="JSON",
                        help="the rest of the entry as JSON: mean, std, num_classes, output_key, pad_multiple, kwargs")
    parser.add_argument("--dataset", required=True, choices=_LazyChoices(_dataset_names), metavar="NAME",
                        help="the dataset the model is evaluated on: %(choices)s (its class count must match)")
    parser.add_argument("--method", required=True, help="method name stored in the checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed stored in the checkpoint (default: %(default)s)")
    parser.add_argument("--config-key", default=None, metavar="KEY", help="config key named in errors")
    parser.add_argument("--out", required=True, metavar="FILE", help="output checkpoint (.pt)")
    _common_args(parser, threads=False)
    parser.set_defaults(func=cmd_import_model)


def _add_tune_parser(sub) -> None:
    """The ``eroseg tune`` subcommand's parser."""
    attacks = _LazyChoices(_attack_names)
    parser = sub.add_parser("tune", help="choose an attack family's parameters on a validation split "
                            "(lowest mean mIoU)")
    parser.add_argument("--checkpoints", nargs="+", required=True, metavar="PT",
                        help="models every candidate is run on")
    _dataset_args(parser)
    parser.add_argument("--split", default="val", metavar="SPLIT", help="the split for choices, never the reported one "
                                                                        "(default: %(default)s)")
    parser.add_argument("--family", required=True, help="label of the tuned setting, stored in the output")
    parser.add_argument("--attack", required=True, choices=attacks, metavar="NAME", help="attack: %(choices)s")
    parser.add_argument("--attack-params", default="{}", metavar="JSON",
                        help="parameters every candidate shares, as JSON")
    parser.add_argument("--grid", required=True, metavar="JSON", help="parameter -> list of candidate values, as JSON")
    parser.add_argument("--max-images", type=_positive_int, default=None, metavar="N",
                        help="images of the split per candidate")
    parser.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                        help="images per batch (default: %(default)s)")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="seed of the attacks' random starts (default: %(default)s)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    _device_arg(parser)
    parser.add_argument("--out", required=True, metavar="JSON", help="output: every candidate's scores and the choice")
    _common_args(parser)
    parser.set_defaults(func=cmd_tune)


def _add_attack_parser(sub) -> None:
    """The ``eroseg attack`` subcommand's parser."""
    attacks = _LazyChoices(_attack_names)
    parser = sub.add_parser("attack", help="attack a checkpoint or your own model on a split or a folder of images; "
                                           "save PNGs")
    _model_args(parser)
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="folder of images (the clean prediction is attacked); or give --dataset and --root")
    _dataset_args(parser, required=False)
    parser.add_argument("--split", default="val", metavar="SPLIT", help="split, with --dataset (default: %(default)s)")
    parser.add_argument("--attack", required=True, choices=attacks, metavar="NAME", help="attack: %(choices)s")
    parser.add_argument("--attack-params", default="{}", metavar="JSON",
                        help=f"attack parameters as JSON, e.g. {{\"eps\": \"8/255\", \"steps\": 20}}; {_NUMBER_HELP}")
    parser.add_argument("--max-images", type=_positive_int, default=None, metavar="N",
                        help="attack the first N images only")
    parser.add_argument("--max-pixels", type=_non_negative_int, default=None, metavar="N",
                        help="skip images with more pixels (H x W) than this, with a warning (default: 4e6 on a CPU, "
                             "16e6 on a GPU; 0: no budget)")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="seed of the attack's random start (default: %(default)s)")
    _device_arg(parser)
    parser.add_argument("--out-dir", required=True, metavar="DIR",
                        help="output folder: adv/, pred_clean/, pred_adv/, side_by_side/ PNGs and summary.csv")
    _common_args(parser)
    parser.set_defaults(func=cmd_attack)


def _add_aggregate_parser(sub) -> None:
    """The ``eroseg aggregate`` subcommand's parser."""
    parser = sub.add_parser("aggregate", help="tables (CSV, Markdown) from evaluation JSON files")
    parser.add_argument("--evals", nargs="+", required=True, metavar="JSON",
                        help="evaluation files written by evaluate, or folders holding them")
    parser.add_argument("--spec", default="{}", metavar="JSON",
                        help="which tables to build, as JSON or YAML flow style")
    parser.add_argument("--tuning", nargs="*", default=[], metavar="JSON",
                        help="tuning results (eroseg tune) for the tuning table")
    parser.add_argument("--benchmarks", nargs="*", default=[], metavar="TSV",
                        help="Snakemake benchmark files (<rule>/<job>.tsv) for the table of per-rule wall times")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="output folder of the tables")
    _common_args(parser, threads=False)
    parser.set_defaults(func=cmd_aggregate)


def _add_figures_parser(sub) -> None:
    """The ``eroseg figures`` subcommand's parser."""
    parser = sub.add_parser("figures", help="figures (PNG, SVG) from evaluation JSON, logs and samples")
    parser.add_argument("--evals", nargs="*", default=[], metavar="JSON", help="evaluation files written by evaluate")
    parser.add_argument("--logs", nargs="*", default=[], metavar="CSV",
                        help="training logs, each at .../<method>/seed<k>/log.csv")
    parser.add_argument("--samples", nargs="*", default=[], metavar="NPZ",
                        help="sample files of evaluate --samples; the first is drawn")
    parser.add_argument("--steps", default=None, metavar="NPZ", help="npz with an EroSeg run's per-step masks")
    parser.add_argument("--spec", default="{}", metavar="JSON",
                        help="what to draw, as JSON or YAML flow style (see eroseg.figures.make_figures)")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="output folder of the figures")
    _common_args(parser, threads=False)
    parser.set_defaults(func=cmd_figures)


def _add_status_parser(sub) -> None:
    """The ``eroseg status`` subcommand's parser."""
    parser = sub.add_parser("status", help="progress and ETA of a run's jobs, read from results/<run>/logs")
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR",
                        help="run folders (results/<run>); default: every results/*/ with logs")
    parser.add_argument("--all", action="store_true", help="also list the finished jobs")
    parser.add_argument("--stale-after", type=float, default=600.0, metavar="SECONDS",
                        help="a job whose log has not changed for this long is 'stopped', not 'running' "
                             "(default: %(default)g)")
    _common_args(parser, threads=False)
    parser.set_defaults(func=cmd_status)


def build_parser() -> argparse.ArgumentParser:
    """The ``eroseg`` parser: one subparser per subcommand, each built by its ``_add_<command>_parser``."""
    from eroseg import __version__

    parser = argparse.ArgumentParser(prog="eroseg", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"eroseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_synthesize_parser, _add_prepare_parser, _add_train_parser, _add_import_model_parser,
                _add_evaluate_parser, _add_tune_parser, _add_attack_parser, _add_aggregate_parser, _add_figures_parser,
                _add_status_parser):
        add(sub)
    return parser


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup(args)
    try:
        args.func(args)
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        # Errors a user can act on (bad input or a value of the wrong type, a file or folder, a full
        # disk, a locked output, a diverged training run): one line, no traceback
        # (EROSEG_TRACEBACK=1 shows it).
        if os.environ.get("EROSEG_TRACEBACK"):
            raise
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            log.error("no space left on device while writing %s: %s", err.filename or "an output", _one_line(err))
        else:
            log.error("%s", _one_line(err))
        return 1
    return 0
