"""The ``eroseg`` command line: one subcommand per pipeline stage.

Snakemake rules call these subcommands through ``shell:`` and pass every
hyper-parameter on the command line (nested settings as JSON), so the package
never reads the workflow's config file and a rule's ``params`` are exactly
what the command receives.
"""

from __future__ import annotations

import argparse
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
    """The attack ``name`` bound to ``params`` (and ``extra``), checked now; None for no attack."""
    from eroseg.attacks import build_attack

    return build_attack(name, {**params, **(extra or {})})


def _dataset(name: str, root: str, split: str, split_lists: str | None = None, **kwargs):
    """The reader of ``split``; with ``split_lists`` (``--split-lists``) the carved lists of that folder apply."""
    from eroseg.data import get_dataset

    if split_lists:
        kwargs["split_lists"] = split_lists
    return get_dataset(name, os.path.expandvars(os.path.expanduser(root)), split, **kwargs)


def _inference_model(model, text: str | None):
    """``model`` as ``--inference`` (the ``evaluation.inference`` block as JSON) says it sees an image."""
    from eroseg.inference import inference_spec, wrap_for_inference

    return wrap_for_inference(model, inference_spec(_json_arg(text or "", "--inference")))


def _evaluated_model(args, device):
    """``(model, meta, source)`` of ``eroseg evaluate``: loaded, checked against the dataset, wrapped for
    ``--inference``."""
    from eroseg.data import dataset_info
    from eroseg.models import check_checkpoint_matches

    model, meta = _model_arg(args, device)
    source = str(args.checkpoint) if args.checkpoint else f"factory:{args.model_factory}"
    check_checkpoint_matches(meta, args.dataset, dataset_info(args.dataset).num_classes, source)
    return _inference_model(model, args.inference), meta, source


def _evaluated_images(args, device):
    """``(dataset, batch_offset)`` of ``eroseg evaluate``: the split (its carved lists applied), checked against
    the pixel budget, cut to ``--max-images`` and to the images of ``--shard``."""
    from eroseg.data.batching import check_pixel_budget
    from eroseg.shards import parse_shard, shard_subset

    shard = parse_shard(args.shard) if args.shard else None
    if shard and shard[0] != 0 and (args.samples or args.record_steps):
        raise ValueError(f"--shard {args.shard}: --samples and --record-steps come from shard 0 only")
    dataset = _dataset(args.dataset, args.root, args.split, args.split_lists)
    check_pixel_budget(dataset, _max_pixels(args.max_pixels, device), args.max_images)
    return shard_subset(dataset, shard, args.batch_size, args.max_images)


def _model_arg(args, device):
    """The model of ``--checkpoint`` or ``--model-factory`` as ``(model, meta)``."""
    if args.model_factory:
        from eroseg.external import load_model_factory

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

    if bool(args.tune_from) != bool(args.tune_size):
        raise ValueError("--tune-from and --tune-size go together (the split a tune list is carved from, and its "
                         "number of images)")
    if args.tune_size and not args.split_lists:
        raise ValueError("--tune-size needs --split-lists, the folder the tune list is written to")
    tune = {"source": args.tune_from, "size": args.tune_size, "seed": args.tune_seed} if args.tune_size else None
    prepare_dataset(
        args.dataset, os.path.expandvars(os.path.expanduser(args.root)), args.splits,
        manifest_path=args.manifest, frequencies_path=args.frequencies, max_pixels=args.max_pixels,
        tune=tune, split_lists=args.split_lists,
    )


def cmd_train(args) -> None:
    from eroseg.training import run_training_job
    from eroseg.tune import tuned_params

    attack_params = tuned_params(_json_arg(args.attack_params, "--attack-params"), args.attack_params_file)
    objective = _json_arg(args.objective, "--objective")
    run_training_job(
        dataset=args.dataset, root=args.root, train_split=args.train_split, val_split=args.val_split,
        model_cfg=_json_arg(args.model, "--model"), train_settings=_json_arg(args.train, "--train"),
        objective=objective, method=args.method or default_method(args.attack, objective),
        attack=args.attack, attack_params=attack_params, robust_eps=args.robust_eps,
        robust_step_size=args.robust_step_size, seed=args.seed, device=args.device, out=args.out,
        log=args.log, progress=not args.quiet, split_lists=args.split_lists,
    )


def cmd_import_model(args) -> None:
    from eroseg.external import import_model
    from eroseg.io import check_writable_dir

    entry = {**_json_arg(args.options, "--options"), "factory": args.factory}
    if args.weights:
        entry["weights"] = args.weights
    check_writable_dir(args.out, "checkpoint (--out)")
    import_model(entry, dataset=args.dataset, method=args.method, seed=args.seed, out=args.out,
                 where=args.config_key or "--factory/--weights/--options")


def default_method(attack: str | None, objective: dict | None = None) -> str:
    """Method stored by ``eroseg train`` without ``--method``: ``standard``, ``<attack>_at`` or ``<objective>_at``."""
    name = (objective or {}).get("name", "adversarial")
    if name != "adversarial":
        return f"{name}_at"
    return "standard" if attack in (None, "", "none") else f"{attack}_at"


def cmd_evaluate(args) -> None:
    from eroseg.device import select_device
    from eroseg.evaluate import parse_settings, write_evaluations
    from eroseg.io import check_writable_dir, manifest_names

    single = {"setting": args.setting, "attack": args.attack, "restarts": args.restarts, "out": args.out,
              "params": _json_arg(args.attack_params, "--attack-params")}
    settings = parse_settings(args.settings, single, samples=bool(args.samples))
    # Attack parameters and output folders are checked before the model and data are loaded.
    attacks = [_make_attack(item.attack, item.params, {"amp": args.amp}) for item in settings]
    for item in settings:
        check_writable_dir(item.out, f"evaluation output of {item.setting}")
    if args.manifest:
        manifest_names(args.manifest, [item.out for item in settings])
    device = select_device(args.device)
    model, meta, source = _evaluated_model(args, device)
    dataset, batch_offset = _evaluated_images(args, device)
    write_evaluations(model, meta, dataset, settings, attacks, split=args.split, source=source, manifest=args.manifest,
                      samples=args.samples, samples_n=args.samples_n, record_steps=args.record_steps,
                      batch_size=args.batch_size, device=device, seed=args.seed, amp=args.amp,
                      batch_offset=batch_offset)


def cmd_attack(args) -> None:
    from eroseg.data import dataset_info
    from eroseg.device import select_device
    from eroseg.export import SUMMARY_FILE, attack_to_folder, dataset_items, folder_items
    from eroseg.io import check_writable_dir
    from eroseg.models import check_checkpoint_matches

    if bool(args.images) == bool(args.dataset):
        raise ValueError("give either --images FOLDER or --dataset NAME --root ROOT (with --split)")
    if args.dataset and not args.root:
        raise ValueError("--dataset needs --root")
    check_writable_dir(Path(args.out_dir) / SUMMARY_FILE, "attack outputs (--out-dir)")
    device = select_device(args.device)
    model, meta = _model_arg(args, device)
    attack = _make_attack(args.attack, _json_arg(args.attack_params, "--attack-params"))
    if args.dataset:
        info = dataset_info(args.dataset)
        check_checkpoint_matches(meta, args.dataset, info.num_classes,
                                 args.checkpoint or f"model factory {args.model_factory}")
        items = dataset_items(_dataset(args.dataset, args.root, args.split, args.split_lists), args.max_images)
    else:
        info = dataset_info(meta.get("dataset") or "synthetic")
        items = folder_items(args.images, args.max_images)
    attack_to_folder(model, items, attack, args.out_dir, info.palette, device=device, seed=args.seed,
                     max_pixels=_max_pixels(args.max_pixels, device), progress=not args.quiet)


def cmd_min_norm(args) -> None:
    from eroseg.data import dataset_info
    from eroseg.device import select_device
    from eroseg.minnorm.catalog import attack_arguments
    from eroseg.minnorm.records import write_min_norm_record
    from eroseg.models import check_checkpoint_matches

    params = _json_arg(args.params, "--params")
    attack_arguments(args.attack, args.norm, args.adv_threshold, args.steps, params)  # before any loading
    max_eps = None if args.norm == "l2" else 1.0
    eps_grid = [parse_number(e, name="--eps", max_value=max_eps) for e in args.eps]
    objects_eps = None if args.objects_eps is None else parse_number(args.objects_eps, name="--objects-eps",
                                                                     max_value=max_eps)
    device = select_device(args.device)
    model, meta = _model_arg(args, device)
    source = str(args.checkpoint) if args.checkpoint else f"factory:{args.model_factory}"
    check_checkpoint_matches(meta, args.dataset, dataset_info(args.dataset).num_classes, source)
    write_min_norm_record(model, meta, _dataset(args.dataset, args.root, args.split), args.out, attack=args.attack,
                          eps_grid=eps_grid, setting=args.setting, source=source, split=args.split, params=params,
                          norm=args.norm, adv_threshold=args.adv_threshold, steps=args.steps,
                          batch_size=args.batch_size, device=device, seed=args.seed, max_images=args.max_images,
                          objects_eps=objects_eps, connectivity=args.connectivity)


def _max_pixels(value: int | None, device) -> int:
    """``--max-pixels``, or the default budget of the device's type (0: no budget)."""
    from eroseg.data.batching import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS.get(device.type, DEFAULT_MAX_PIXELS["cuda"]) if value is None else value


def cmd_tune(args) -> None:
    from eroseg.device import select_device
    from eroseg.io import check_writable_dir, exclusive_lock, remove_stale_temps, write_json
    from eroseg.tune import TUNING_VERSION, grid_candidates, tune_attack

    base = _json_arg(args.attack_params, "--attack-params")
    grid = _json_arg(args.grid, "--grid")
    for candidate in grid_candidates(grid):  # every candidate is checked before any model is loaded
        _make_attack(args.attack, {**base, **candidate})
    check_writable_dir(args.out, "tuning result (--out)")
    with exclusive_lock(args.out):  # one writer: a second tune on the same output fails at once
        remove_stale_temps(args.out)
        dataset = _dataset(args.dataset, args.root, args.split, args.split_lists)
        options = {"attack": args.attack, "base": base, "grid": grid, "batch_size": args.batch_size,
                   "device": select_device(args.device), "seed": args.seed, "amp": args.amp,
                   "max_images": args.max_images}
        wrap = (lambda model: _inference_model(model, args.inference)) if args.inference else None
        result = tune_attack(args.checkpoints, dataset, wrap=wrap, **options)
        write_json(args.out, {"version": TUNING_VERSION, "family": args.family, "attack": args.attack,
                              "split": args.split, "max_images": args.max_images, "base": base, "grid": grid,
                              **result})
    log.info("%s: chose %s (mean val mIoU %.4f over %d models)", args.family, result["chosen"],
             min(c["mean"] for c in result["candidates"]), len(result["candidates"][0]["miou"]))


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


def cmd_merge_shards(args) -> None:
    from eroseg.shards import merge_shard_folders

    merged = merge_shard_folders(args.shards, args.out_dir)
    log.info("merged %d shards into %s: %d result files", len(args.shards), args.out_dir, len(merged))


def cmd_plan(args) -> None:
    from eroseg.costplan import StepSeconds, benchmark, format_plan, load_plan

    plan = load_plan(args.configfile)
    if args.step_seconds:
        attack_step, forward, train_step = args.step_seconds
        seconds = StepSeconds(attack_step, forward, train_step)
    else:
        seconds = benchmark(plan, device=args.device)
    sys.stdout.write(format_plan(plan, seconds) + "\n")


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


def _split_lists_arg(parser) -> None:
    """Add ``--split-lists`` (the folder of carved split lists) to a subcommand's parser."""
    parser.add_argument("--split-lists", default=None, metavar="DIR",
                        help="folder of carved split lists (eroseg prepare --split-lists): a split listed there "
                             "(tune) is read from its list, and the split it was carved from without those images")


def _inference_arg(parser) -> None:
    """Add ``--inference`` (how the model sees an image) to a subcommand's parser."""
    parser.add_argument("--inference", default=None, metavar="JSON",
                        help="the evaluation.inference block as JSON: {\"mode\": \"whole\"} (default) or "
                             "{\"mode\": \"slide\", \"crop\": [H, W], \"stride\": [H, W], \"windows_per_chunk\": N, "
                             "\"pad\": false}; attacks perturb the whole image through it (eroseg.inference)")


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
    parser.add_argument("--tune-from", default=None, metavar="SPLIT",
                        help="carve the split tune out of this split (one of --splits) first (eroseg.data.splits)")
    parser.add_argument("--tune-size", type=_non_negative_int, default=0, metavar="N",
                        help="images of the tune list (default: %(default)s, none)")
    parser.add_argument("--tune-seed", type=_non_negative_int, default=0, metavar="S",
                        help="seed of the tune list's choice (default: %(default)s)")
    _split_lists_arg(parser)
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
    _split_lists_arg(parser)
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
                             "params_file, restarts, objects, out} (replaces --attack/--attack-params/--setting/"
                             "--restarts/--out; objects: {\"connectivity\": 4} keeps each image's ground-truth "
                             "component summaries, read by the size table)")
    _attack_run_args(parser, "evaluate")
    parser.add_argument("--max-pixels", type=_non_negative_int, default=None, metavar="N",
                        help="refuse, naming it, an image with more pixels (H x W) than this, before any work "
                             "(default: 4e6 on a CPU, 16e6 on a GPU; 0: no budget)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    parser.add_argument("--samples", default=None, metavar="NPZ", help="write qualitative examples (.npz) here")
    parser.add_argument("--samples-n", type=_positive_int, default=4, metavar="N",
                        help="number of examples in --samples (default: %(default)s)")
    parser.add_argument("--record-steps", action="store_true", help="record per-step attack masks into --samples")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="evaluate shard I (from 0) of N: a range of whole batches of the split (after "
                             "--max-images) with the one job's random starts; eroseg merge-shards joins the N "
                             "folders (eroseg.shards)")
    _split_lists_arg(parser)
    _inference_arg(parser)
    _device_arg(parser)
    parser.add_argument("--out", default=None, metavar="JSON",
                        help="output of the single setting: metrics (miou, pixel_acc, per_class_iou as fractions "
                             "in [0, 1]; tables show percent) and per-image counts")
    parser.add_argument("--manifest", default=None, metavar="JSON",
                        help="written last: the list of every output, relative to its folder, which must hold them "
                             "all; aggregate and figures then refuse that folder if one is missing")
    _common_args(parser)
    parser.set_defaults(func=cmd_evaluate)


def _attack_run_args(parser, verb: str) -> None:
    """--seed, --batch-size and --max-images of the commands that attack a split (``verb``: what they do)."""
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="seed of the attack's random start (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                        help="images per batch (default: %(default)s)")
    parser.add_argument("--max-images", type=_positive_int, default=None, metavar="N",
                        help=f"{verb} the first N images only (default: all)")


def _add_min_norm_parser(sub) -> None:
    """The ``eroseg min-norm`` subcommand's parser."""
    parser = sub.add_parser("min-norm", help="minimal-norm attack (adv-lib) on every image: per-image norms and the "
                                             "counts at each eps of a grid (eroseg[minnorm])")
    _model_args(parser)
    _dataset_args(parser)
    parser.add_argument("--split", default="val", metavar="SPLIT", help="split to attack (default: %(default)s)")
    parser.add_argument("--attack", required=True, metavar="NAME", help="alma_prox, pdpgd, pdgd or dag")
    parser.add_argument("--setting", default=None, help="label of this setting in tables (default: the attack name)")
    parser.add_argument("--params", default="{}", metavar="JSON",
                        help='the attack\'s own parameters as JSON (ASCII names), e.g. {"lr_init": 0.01}')
    parser.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                        help="iterations (default: adv-lib's)")
    parser.add_argument("--eps", nargs="+", required=True, metavar="EPS",
                        help=f"budgets at which the perturbation scaled to eps is evaluated; {_NUMBER_HELP}")
    parser.add_argument("--norm", default="linf", choices=("linf", "l2"), help="norm minimised (default: %(default)s)")
    parser.add_argument("--adv-threshold", type=float, default=0.99, metavar="SHARE",
                        help="share of valid pixels to fool (default: %(default)s)")
    parser.add_argument("--objects-eps", default=None, metavar="EPS",
                        help="an eps of --eps at which each image's ground-truth components are summarised (the size "
                             f"table); {_NUMBER_HELP}")
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=4,
                        help="connectivity of those components (default: %(default)s)")
    _attack_run_args(parser, "attack")
    _device_arg(parser)
    parser.add_argument("--out", required=True, metavar="JSON",
                        help="the record: per-image norms, fooled shares, success; clean counts and counts at each eps")
    _common_args(parser)
    parser.set_defaults(func=cmd_min_norm)


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
    _split_lists_arg(parser)
    _inference_arg(parser)
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
    _split_lists_arg(parser)
    _common_args(parser)
    parser.set_defaults(func=cmd_attack)


def _add_merge_shards_parser(sub) -> None:
    """The ``eroseg merge-shards`` subcommand's parser."""
    parser = sub.add_parser("merge-shards", help="merge the evaluation folders of one model's shards (evaluate "
                                                 "--shard) into the folder one job would have written")
    parser.add_argument("--shards", nargs="+", required=True, metavar="DIR",
                        help="the shards' evaluation folders, in shard order (0, 1, ...), each with its manifest")
    parser.add_argument("--out-dir", required=True, metavar="DIR",
                        help="output folder: every result file merged, then its manifest.json")
    _common_args(parser, threads=False)
    parser.set_defaults(func=cmd_merge_shards)


def _add_plan_parser(sub) -> None:
    """The ``eroseg plan`` subcommand's parser."""
    parser = sub.add_parser("plan", help="jobs per stage and estimated device-hours of a config, from a short "
                                         "benchmark of its model on this device (eroseg.costplan)")
    parser.add_argument("--configfile", required=True, metavar="YAML", help="the workflow config, e.g. config/voc.yaml")
    parser.add_argument("--step-seconds", nargs=3, type=float, default=None,
                        metavar=("ATTACK_STEP", "FORWARD", "TRAIN_STEP"),
                        help="seconds per image of an attack step, a forward and a training step (measured "
                             "elsewhere) instead of the benchmark")
    _device_arg(parser)
    _common_args(parser)
    parser.set_defaults(func=cmd_plan)


def _add_aggregate_parser(sub) -> None:
    """The ``eroseg aggregate`` subcommand's parser."""
    parser = sub.add_parser("aggregate", help="tables (CSV, Markdown) from evaluation JSON files")
    parser.add_argument("--evals", nargs="+", required=True, metavar="JSON",
                        help="evaluation files written by evaluate, or folders holding them")
    parser.add_argument("--spec", default="{}", metavar="JSON",
                        help="what the tables show (eroseg.report.spec.ReportSpec; a table is built when the spec "
                             "enables it), as JSON or YAML flow style")
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
                        help="what to draw (eroseg.report.spec.ReportSpec), as JSON or YAML flow style")
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
                _add_evaluate_parser, _add_merge_shards_parser, _add_min_norm_parser, _add_tune_parser,
                _add_attack_parser, _add_aggregate_parser, _add_figures_parser, _add_status_parser, _add_plan_parser):
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
