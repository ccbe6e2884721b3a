"""Pretrained models of your own in the workflow: ``methods.<name>.external``.

A method with an ``external`` entry is not trained. Its model is built by a
*factory*, given its weights from a local file, wrapped with
:func:`eroseg.models.wrap_model` (normalisation inside, logits at the input
size) and written as an eroseg checkpoint by ``eroseg import-model``; from
there it is evaluated, aggregated and reported like a trained method. The
entry (``docs/own_model.md``, ``config/README.md``)::

    factory: "torchvision:lraspp_mobilenet_v3_large"   # or "mymodels:build", "path/to/file.py:build"
    weights: path/to/weights.pth                        # optional: a state dict (.pt/.pth/.bin/.safetensors)
    mean: [0.485, 0.456, 0.406]                         # optional, on the [0, 1] scale (default ImageNet's)
    std: [0.229, 0.224, 0.225]
    num_classes: 21                                     # optional: checked against the logits and the dataset
    output_key: out                                     # optional: where the logits are in the output
    pad_multiple: 1                                     # optional: pad inputs to a multiple, crop logits back
    kwargs: {}                                          # optional: keyword arguments of the factory

Security: a factory other than a torchvision builder is code that runs with
your permissions. ``module:function`` imports ``module`` (its top-level code
runs; the current folder is searched after ``sys.path``) and calls
``function``; ``path/to/file.py:function`` executes that file. A checkpoint
written by ``import-model`` names its factory, which :func:`eroseg.models.load_model`
runs to rebuild the model: it does so only for torchvision builders and for
the factories listed in the environment variable ``EROSEG_TRUSTED_FACTORIES``
(a JSON list; the workflow sets it to the factories of its config), so a
checkpoint from elsewhere cannot make eroseg run code.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The keys of an ``external`` entry; ``factory`` is the only required one.
EXTERNAL_KEYS = ("factory", "weights", "mean", "std", "num_classes", "output_key", "pad_multiple", "kwargs")
#: The :func:`eroseg.models.wrap_model` options an entry (or a factory's meta dict) may set.
WRAP_KEYS = ("mean", "std", "output_key", "pad_multiple")
TORCHVISION = "torchvision"
#: Environment variable: JSON list of the factories whose checkpoints :func:`eroseg.models.load_model` may rebuild.
TRUST_ENV = "EROSEG_TRUSTED_FACTORIES"
# A module path or a .py file, a colon, a (dotted) attribute: no spaces, quotes or shell characters.
FACTORY_PATTERN = re.compile(r"^[A-Za-z0-9_./~+-]+:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
FACTORY_EXAMPLES = ('"mymodels:build", "path/to/mymodels.py:build" or a torchvision builder such as '
                    '"torchvision:lraspp_mobilenet_v3_large"')
# Keys a checkpoint or training script commonly nests its state dict under.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


# ------------------------------------------------------------------ the config entry
def _stats(value, key: str) -> list[float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{key}: expected 3 numbers (one per RGB channel) on the [0, 1] scale, got {value!r}")
    if any(v > 1 for v in value):
        raise ValueError(f"{key}: {list(value)} is on the 0-255 scale; give it on the [0, 1] scale of the images "
                         f"(e.g. {[round(v / 255, 4) for v in value]})")
    if any(v < 0 for v in value):
        raise ValueError(f"{key}: expected values in [0, 1], got {list(value)}")
    return [float(v) for v in value]


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}: expected an integer >= 1, got {value!r}")
    return value


def check_external(entry: Any, where: str = "external") -> dict:
    """Check one ``external`` entry and return it with its keys in order (absent keys stay absent).

    Args:
        entry: the entry as read from the config (or ``--options`` plus factory and weights).
        where: the config key of the entry, named in every error (e.g. ``methods.mine.external``).

    Returns:
        A new dict holding the entry's keys; ``mean``/``std`` as float lists, ``kwargs`` a dict.

    Raises:
        ValueError: one line naming ``where.<key>``, what it holds and what is expected.
    """
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping with at least 'factory' ({FACTORY_EXAMPLES}), got {entry!r}")
    for key in entry:
        if key not in EXTERNAL_KEYS:
            close = difflib.get_close_matches(str(key), EXTERNAL_KEYS, n=1)
            hint = f"did you mean {where}.{close[0]}?" if close else f"valid keys: {', '.join(EXTERNAL_KEYS)}"
            raise ValueError(f"{where}.{key}: unknown key; {hint}")
    out: dict[str, Any] = {}
    factory = entry.get("factory")
    if not isinstance(factory, str) or not FACTORY_PATTERN.match(factory):
        raise ValueError(f"{where}.factory: expected MODULE:FUNCTION ({FACTORY_EXAMPLES}; letters, digits and "
                         f"_ . / ~ + - only), got {factory!r}")
    out["factory"] = factory
    if entry.get("weights") is not None:
        if not isinstance(entry["weights"], str) or not entry["weights"].strip():
            raise ValueError(f"{where}.weights: expected the path of a local weights file, got {entry['weights']!r}")
        out["weights"] = entry["weights"]
    if ("mean" in entry) != ("std" in entry):
        raise ValueError(f"{where}: give both mean and std or neither (default: ImageNet's); [0, 0, 0] and "
                         "[1, 1, 1] pass the [0, 1] images unchanged")
    if "mean" in entry:
        out["mean"] = _stats(entry["mean"], f"{where}.mean")
        out["std"] = _stats(entry["std"], f"{where}.std")
        if any(v == 0 for v in out["std"]):
            raise ValueError(f"{where}.std: every channel must be > 0, got {out['std']}")
    if entry.get("num_classes") is not None:
        out["num_classes"] = _positive_int(entry["num_classes"], f"{where}.num_classes")
    if entry.get("output_key") is not None:
        if not isinstance(entry["output_key"], str) or not entry["output_key"]:
            raise ValueError(f"{where}.output_key: expected a dict key or attribute name, got {entry['output_key']!r}")
        out["output_key"] = entry["output_key"]
    if entry.get("pad_multiple") is not None:
        out["pad_multiple"] = _positive_int(entry["pad_multiple"], f"{where}.pad_multiple")
    kwargs = entry.get("kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError(f"{where}.kwargs: expected a mapping of keyword arguments of the factory, got {kwargs!r}")
        out["kwargs"] = dict(kwargs)
    if factory.startswith(f"{TORCHVISION}:"):
        name = factory.split(":", 1)[1]
        builders = torchvision_builders()
        if builders is not None and name not in builders:
            close = difflib.get_close_matches(name, builders, n=1)
            hint = f"did you mean {TORCHVISION}:{close[0]}?" if close else f"torchvision offers: {', '.join(builders)}"
            raise ValueError(f"{where}.factory: {name!r} is not a torchvision segmentation model; {hint}")
    return out


def check_methods(methods: Any) -> dict[str, dict]:
    """The external entries of a config's ``methods``, each checked (:func:`check_external`).

    A method is trained here (it has ``attack``, ``null`` for standard training) or external (it has
    ``external``), never both; the training keys (``params``, ``tuned``) belong to trained methods.

    Returns:
        ``{method: checked entry}`` of the external methods (empty when ``methods`` is not a mapping:
        the schema reports that).

    Raises:
        ValueError: one line naming ``methods.<name>`` (and the key) and what is expected.
    """
    if not isinstance(methods, Mapping):
        return {}
    out = {}
    for name, entry in methods.items():
        if not isinstance(entry, Mapping):
            continue  # the schema names it
        where = f"config key methods.{name}"
        if "external" in entry:
            if "attack" in entry:
                raise ValueError(f"{where}: has both 'attack' (a method trained here) and 'external' (your own "
                                 "model, not trained); keep one")
            for key in ("params", "tuned", "objective"):
                if entry.get(key):
                    raise ValueError(f"{where}.{key}: a training setting, but the method is external (not trained "
                                     "here); remove it")
            out[name] = check_external(entry["external"], f"{where}.external")
        elif "attack" not in entry:
            raise ValueError(f"{where}: give 'attack' (the training attack; null for standard training) or "
                             "'external' (your own pretrained model: {factory: ..., weights: ...})")
    return out


def factory_file(spec: str) -> str | None:
    """The ``.py`` file a factory ``path/to/file.py:function`` names, else None."""
    module = spec.rpartition(":")[0]
    return module if module.endswith(".py") else None


# ------------------------------------------------------------------ trust
def trusted_factories() -> list[str]:
    """The factories listed in ``$EROSEG_TRUSTED_FACTORIES`` (a JSON list of strings)."""
    text = os.environ.get(TRUST_ENV, "").strip()
    if not text:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"${TRUST_ENV} must be a JSON list of factories, e.g. '[\"mymodels:build\"]', got {text!r}")
    return value


def is_trusted(spec: str) -> bool:
    """Whether a checkpoint naming factory ``spec`` may be rebuilt: torchvision builders, and listed factories."""
    return spec.startswith(f"{TORCHVISION}:") or spec in trusted_factories()


# ------------------------------------------------------------------ factories
def torchvision_builders() -> list[str] | None:
    """Names of torchvision's segmentation model builders (None if torchvision cannot be imported)."""
    try:
        import torchvision.models
        import torchvision.models.segmentation
    except ImportError:
        return None
    return list(torchvision.models.list_models(module=torchvision.models.segmentation))


def import_factory(spec: str, where: str) -> Callable:
    """The callable a factory spec names: ``module:function`` or ``path/to/file.py:function``.

    This runs code: the module is imported (the current folder is appended to ``sys.path`` first, as
    ``python -m`` would search it; installed packages still come first) or the file executed.

    Raises:
        ValueError: malformed spec, module or file not found, attribute missing or not callable.
    """
    module_name, sep, func_name = str(spec).rpartition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"{where}: expected MODULE:FUNCTION, e.g. mymodels:build or path/to/mymodels.py:build")
    try:
        if module_name.endswith(".py"):
            path = Path(os.path.expanduser(module_name))
            if not path.is_file():
                raise FileNotFoundError(f"{where}: file {path} not found")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{where}: cannot import {module_name!r} ({err}); is it on PYTHONPATH?") from err
    factory = module
    for part in func_name.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"{where}: {module_name!r} has no attribute {func_name!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"{where}: {func_name!r} is not callable")
    return factory


def resolve_factory(spec: str, *, num_classes: int | None = None, where: str = "factory") -> Callable:
    """The callable behind ``spec``; a torchvision builder gets ``weights=None``, ``weights_backbone=None``
    (no download: the weights come from the entry's file) and ``num_classes``, which ``kwargs`` may override."""
    if spec.startswith(f"{TORCHVISION}:"):
        name = spec.split(":", 1)[1]
        builders = torchvision_builders()
        if builders is None:
            raise ValueError(f"{where}: torchvision cannot be imported")
        if name not in builders:
            raise ValueError(f"{where}: {name!r} is not a torchvision segmentation model; torchvision offers: "
                             f"{', '.join(builders)}")
        import torchvision.models

        defaults = {"weights": None, "weights_backbone": None}
        if num_classes is not None:
            defaults["num_classes"] = num_classes
        return functools.partial(torchvision.models.get_model, name, **defaults)
    return import_factory(spec, where)


def read_state_dict(path: str | os.PathLike, where: str = "weights") -> dict:
    """A state dict from a local file: ``.safetensors``, or a torch file read with ``weights_only=True``.

    A dict that nests the state dict under ``state_dict``, ``model_state_dict`` or ``model`` is unpacked,
    and a ``module.`` prefix on every key (a DistributedDataParallel model) is dropped.
    """
    import torch

    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"{where}: weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ValueError(f"{where}: {path} is a .safetensors file; pip install safetensors") from None
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:
        raise ValueError(f"{where}: {path} is not a readable weights file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); expected a state dict saved with "
                         "torch.save(model.state_dict(), ...) or a .safetensors file") from err
    if isinstance(state, Mapping):
        for key in _STATE_DICT_KEYS:
            if isinstance(state.get(key), Mapping) and not isinstance(state.get(key), torch.Tensor):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: {path} holds no state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_weights(net, path: str | os.PathLike, where: str = "weights") -> None:
    """Load a weights file into ``net`` (strict); a mismatch names the file and the first keys that differ."""
    state = read_state_dict(path, where)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs the model's {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}"
                         f"{', ...' if len(unexpected) > 3 else ''})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape ({shapes[0]}: another architecture or num_classes?)")
        hint = ("; torchvision's pretrained files hold the auxiliary head: add kwargs: {aux_loss: true}"
                if any(k.startswith("aux_classifier.") for k in unexpected) else "")
        raise ValueError(f"{where}: {path} does not fit the model the factory built: {'; '.join(parts)}{hint}")
    net.load_state_dict(state)


def split_factory_output(built, where: str) -> tuple:
    """A model factory's result as ``(module, meta dict)``: it may return a module or ``(module, meta)``.

    Raises:
        ValueError: naming ``where`` when the result is neither.
    """
    import torch.nn as nn

    meta: dict = {}
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[1], Mapping):
        built, meta = built[0], dict(built[1])
    if not isinstance(built, nn.Module):
        raise ValueError(f"{where} returned {type(built).__name__}; expected an nn.Module or (nn.Module, meta dict)")
    return built, meta


def build_external(entry: Mapping, *, num_classes: int | None = None, where: str = "external"):
    """Build the model an ``external`` entry describes, with its weights, wrapped for eroseg.

    The factory is called with the entry's ``kwargs`` and returns an ``nn.Module`` or ``(module, meta)``,
    where ``meta`` may set the :data:`WRAP_KEYS` (the entry's own values win) and ``num_classes``.

    Args:
        entry: a checked entry (:func:`check_external`).
        num_classes: the dataset's classes, used where the entry and the factory give none
            (a torchvision builder is built with them).
        where: named in errors.

    Returns:
        ``(model, info)``: a :class:`eroseg.models.SegmentationModel` in eval mode on the CPU, and the
        entry's facts to record (``factory``, ``kwargs``, the wrap options used, ``num_classes``).
    """

    from eroseg.models import IMAGENET_MEAN, IMAGENET_STD, SegmentationModel, wrap_model

    entry = check_external(entry, where)
    classes = entry.get("num_classes", num_classes)
    factory = resolve_factory(entry["factory"], num_classes=classes, where=f"{where}.factory")
    built, meta = split_factory_output(factory(**entry.get("kwargs", {})), f"{where}.factory: {entry['factory']}")
    if "num_classes" in entry and meta.get("num_classes") not in (None, entry["num_classes"]):
        raise ValueError(f"{where}.num_classes: {entry['num_classes']}, but the factory says {meta['num_classes']}")
    classes = entry.get("num_classes", meta.get("num_classes", classes))
    net = built.net if isinstance(built, SegmentationModel) else built
    if "weights" in entry:
        load_weights(net, entry["weights"], f"{where}.weights")
    if isinstance(built, SegmentationModel):
        given = [k for k in WRAP_KEYS if k in entry]
        if given:
            raise ValueError(f"{where}: the factory returned a model wrapped by eroseg, which fixes "
                             f"{', '.join(given)} itself; drop them from the entry or return the bare model")
        model = built
        if classes is not None:
            model.num_classes = int(classes)
        wrap = {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
                "output_key": model.output_key, "pad_multiple": model.pad_multiple}
    else:
        wrap = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "output_key": None, "pad_multiple": 1}
        wrap.update({k: meta[k] for k in WRAP_KEYS if k in meta})
        wrap.update({k: entry[k] for k in WRAP_KEYS if k in entry})
        model = wrap_model(built, num_classes=classes, **wrap)
    info = {"factory": entry["factory"], "kwargs": entry.get("kwargs", {}), **wrap,
            "wrapped_by_factory": isinstance(built, SegmentationModel)}
    return model.eval(), {"external": info, "num_classes": classes,
                          **{k: meta[k] for k in ("classes", "dataset") if k in meta}}


def rebuild_external(info: Mapping, num_classes: int, where: str):
    """The model of an imported checkpoint's ``external`` facts, before its state dict is loaded.

    Raises:
        ValueError: the factory is neither a torchvision builder nor listed in ``$EROSEG_TRUSTED_FACTORIES``.
    """
    spec = info.get("factory")
    if not isinstance(spec, str) or not is_trusted(spec):
        raise ValueError(f"{where}: the checkpoint's model is built by the factory {spec!r}, code eroseg would "
                         f"run; it runs only factories listed in ${TRUST_ENV} (a JSON list; the workflow lists "
                         f"its config's), e.g. {TRUST_ENV}='[{json.dumps(spec)}]' if you trust it")
    entry = {"factory": spec, "kwargs": dict(info.get("kwargs") or {})}
    if not info.get("wrapped_by_factory"):
        entry.update({k: info[k] for k in WRAP_KEYS if info.get(k) is not None})
    entry["num_classes"] = int(num_classes)
    model, _ = build_external(entry, num_classes=num_classes, where=where)
    return model


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
    from eroseg.models import SegmentationModel, wrap_model

    where = f"--model-factory {spec!r}"
    factory = import_factory(spec, where)
    func_name = str(spec).rpartition(":")[2]
    built, meta = split_factory_output(factory(), f"{where}: the factory")
    wrap_opts = {k: meta.pop(k) for k in WRAP_KEYS if k in meta}
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


def import_model(entry: Mapping, *, dataset: str, method: str, seed: int, out: str | os.PathLike,
                 where: str) -> dict:
    """Build the model of an ``external`` entry with its weights, check it on ``dataset`` and save it as a checkpoint.

    The check is a forward pass on a ``[1, 3, 64, 64]`` image: the model must
    run and return one channel per class of the dataset.

    Args:
        entry: the ``external`` entry (``factory``, ``weights``, ... as :func:`check_external`).
        dataset: registered dataset the model is evaluated on (its class count must match).
        method, seed: recorded in the checkpoint.
        out: checkpoint path (written atomically).
        where: named in errors (the config key, or the command-line flags).

    Returns:
        The checkpoint's metadata.

    Raises:
        ValueError: the model is for another dataset or class count, its forward pass fails, or it returns
            another number of channels (each names ``where``).
    """
    import torch

    from eroseg.data import dataset_info
    from eroseg.models import save_checkpoint

    info = dataset_info(dataset)
    model, built = build_external(entry, num_classes=info.num_classes, where=where)
    classes = int(built["num_classes"] or info.num_classes)
    if classes != info.num_classes or built.get("dataset") not in (None, dataset):
        raise ValueError(f"{where}: the model is for {built.get('dataset') or 'a dataset'} with {classes} classes, "
                         f"but the data is {dataset} with {info.num_classes} classes")
    model.num_classes, declared = None, model.num_classes  # the channels are compared below, with the data's
    try:  # a forward pass now, so that a model whose output eroseg cannot read fails here, named
        with torch.no_grad():
            output = model(torch.rand(1, 3, 64, 64))
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"{where}: a forward pass of the model on a [1, 3, 64, 64] image failed: {err}") from None
    model.num_classes = declared
    if output.shape[1] != classes:
        raise ValueError(f"{where}: the model returns {output.shape[1]} channels; the data has {classes} classes")
    meta = {**built, "num_classes": classes, "classes": list(built.get("classes") or info.classes),
            "dataset": dataset, "method": method, "seed": seed, "weights_file": entry.get("weights")}
    save_checkpoint(out, model, meta)
    log.info("%s: %s%s -> %s (%d classes)", method, entry["factory"],
             f" with {entry['weights']}" if entry.get("weights") else "", out, classes)
    return meta
