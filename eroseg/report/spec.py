"""The report's spec: what the tables and figures show, typed, with every default in one place.

The workflow builds it from the config (:meth:`eroseg.plan.EvaluationPlan.report_spec`) and passes it to
``eroseg aggregate`` / ``eroseg figures --spec`` as YAML flow style (:meth:`ReportSpec.to_dict`);
:meth:`ReportSpec.from_dict` reads it back and refuses a key it does not know or a value of the wrong kind
with one error naming it. Budgets (``eps``) are fractions of the pixel range (8/255 = 0.0314).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from eroseg.conventions import DEFAULT_EPS
from eroseg.numbers import parse_number

#: The two rules of the worst case (see :func:`eroseg.metrics.worst_case_stats`).
WORST_CASE_RULES = ("miou", "pixel_acc")

#: Marks the fields only the figures read: the aggregate rule's spec leaves them out.
FIGURE_ONLY = {"figures_only": True}


# ------------------------------------------------------------------ value checks
def _names(value, key: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"report spec key {key}: expected a list of names, got {value!r}")
    return tuple(value)


def _name(value, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"report spec key {key}: expected a name, got {value!r}")
    return value


def _optional_name(value, key: str) -> str | None:
    return None if value is None else _name(value, key)


def _count(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"report spec key {key}: expected a whole number >= 1, got {value!r}")
    return value


def _optional_count(value, key: str) -> int | None:
    return None if value is None else _count(value, key)


def _seed(value, key: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"report spec key {key}: expected a seed (a whole number), got {value!r}")
    return value


def _eps(value, key: str) -> float:
    return parse_number(value, name=f"report spec key {key}", max_value=1.0)


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"report spec key {key}: expected a number, got {value!r}")
    return float(value)


def _flag(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"report spec key {key}: expected true or false, got {value!r}")
    return value


def _text(value, key: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"report spec key {key}: expected text, got {value!r}")
    return value


def _rule(value, key: str) -> str:
    if value not in WORST_CASE_RULES:
        raise ValueError(f"report spec key {key}: expected one of {', '.join(WORST_CASE_RULES)}, got {value!r}")
    return value


def _steps_of(value, key: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"report spec key {key}: expected a mapping setting -> steps, got {value!r}")
    return {_name(k, key): _count(v, f"{key}.{k}") for k, v in value.items()}


def _labelled(value, key: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
        raise ValueError(f"report spec key {key}: expected a list of [label, setting] pairs, got {value!r}")
    return tuple((_name(a, key), _name(b, key)) for a, b in value)


def _seeds(value, key: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"report spec key {key}: expected a list of seeds, got {value!r}")
    return tuple(_seed(v, key) for v in value)


def _claims(value, key: str) -> dict | None:
    from eroseg.stats import claims_options

    if value is not None and not isinstance(value, dict):
        raise ValueError(f"report spec key {key}: expected a mapping, got {value!r}")
    return claims_options(value) or None


def _check(convert, **kwargs):
    """A dataclass field whose value :func:`_read` passes through ``convert(value, key)``."""
    return field(metadata={"check": convert, **kwargs.pop("metadata", {})}, **kwargs)


# ------------------------------------------------------------------ reading
def _read(cls, data, where: str):
    """``cls`` from the mapping ``data``: each key checked by its field, an unknown key refused naming it."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"report spec key {where.rstrip('.') or '(top)'}: expected a mapping, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean {where}{close[0]}?" if close else f"; valid keys: {', '.join(known)}"
            raise ValueError(f"report spec key {where}{key}: unknown{hint}")
    values = {}
    for name, value in data.items():
        convert = known[name].metadata.get("check")
        values[name] = convert(value, f"{where}{name}") if convert else value
    try:
        return cls(**values)
    except TypeError:
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        raise ValueError(f"report spec key {where}{missing[0]}: required") from None


def _block(cls):
    """A field check that reads a nested block (or None) as ``cls``."""
    def convert(value, key):
        return None if value is None else _read(cls, value, f"{key}.")
    return convert


def _plain(value) -> Any:
    """``value`` with tuples as lists and dataclasses as dicts: what YAML and JSON write."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class Headline:
    """The budget of the main table: ``eps`` (fraction of the pixel range) and attack ``steps``."""

    eps: float = _check(_eps, default=DEFAULT_EPS)
    steps: int = _check(_count, default=10)


@dataclass(frozen=True)
class Checks:
    """Gradient-masking checks: ``setting`` at each ``eps`` with ``steps``; ``restarts``: a setting with
    restarts at the headline; ``seeds``: the seeds checked (None: every seed)."""

    setting: str = _check(_name)
    eps: tuple[float, ...] = _check(lambda v, k: tuple(_eps(e, k) for e in _names_or_numbers(v, k)))
    steps: int = _check(_count)
    restarts: str | None = _check(_optional_name, default=None)
    max_restart_gain: float = _check(_number, default=1.0)
    seeds: tuple[int, ...] | None = _check(_seeds, default=None)


def _names_or_numbers(value, key: str) -> list:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"report spec key {key}: expected a non-empty list of budgets, got {value!r}")
    return list(value)


@dataclass(frozen=True)
class Sweep:
    """Attack strength against steps and eps on one ``method``; ``attacks``: the settings drawn (empty: every
    evaluated setting, in the figures)."""

    method: str = _check(_name, default="standard")
    attacks: tuple[str, ...] = _check(_names, default=())


@dataclass(frozen=True)
class Ablation:
    """The EroSeg ablation on ``method``: ``attacks`` as ``(label, setting)`` pairs."""

    method: str = _check(_name)
    attacks: tuple[tuple[str, str], ...] = _check(_labelled, default=())


@dataclass(frozen=True)
class PerClass:
    """The per-class IoU figure: ``method`` (None: the sweep's), ``attacks`` (empty: the sweep's), ``seed``
    (None: the first evaluation found)."""

    method: str | None = _check(_optional_name, default=None)
    attacks: tuple[str, ...] = _check(_names, default=())
    seed: int | None = _check(_seed, default=None)


@dataclass(frozen=True)
class Samples:
    """What the qualitative and erosion figures show (for their titles): one attack on one method."""

    method: str = _check(_name)
    attack: str = _check(_name)
    eps: float = _check(_eps)
    steps: int = _check(_count)


@dataclass(frozen=True)
class MinNorm:
    """Minimal-norm runs (:mod:`eroseg.minnorm`): the ``eps`` grid of their curves and their record ``files``
    (each with ``method``, ``seed`` and ``setting``); the ``min_norm`` table and curve, and one more candidate of
    the main table's worst case at the headline eps."""

    eps: tuple[float, ...] = _check(lambda v, k: tuple(_eps(e, k) for e in _names_or_numbers(v, k)))
    files: tuple[str, ...] = _check(_names, default=())


# ------------------------------------------------------------------ the spec
@dataclass(frozen=True)
class ReportSpec:
    """Everything the tables and figures need besides their input files.

    Tables: ``methods`` (row order), ``headline``, ``attacks`` (the main table's columns), ``steps_of``
    (a setting's steps at the headline where not the headline's: FGSM 1, SEA its own), ``sea`` (the SEA
    setting or None), ``sea_plus`` (settings added to SEA in the sea table), ``worst_case`` (settings of
    the worst case, SEA added; empty: ``attacks``), ``worst_case_rule``, ``checks``, ``claims``
    (:func:`eroseg.stats.claims_options`; with it the verdicts), ``sweep``, ``ablation``, ``tuning`` (the
    tuned families: the tuning table), ``timings`` (the table of wall times per rule) and ``min_norm``
    (:class:`MinNorm`: the minimal-norm table and curve, and a candidate of the worst case), ``size`` (the
    table and figure of robustness by object size, from the object summaries of the clean and worst-case
    evaluations at the headline). A table is written
    when its block is set (:mod:`eroseg.report.registry`). Figures also read ``dataset`` (class names,
    palette), ``dpi``, ``per_class``, ``samples`` and the two title overrides.
    """

    methods: tuple[str, ...] = _check(_names, default=())
    headline: Headline = _check(_block(Headline), default=Headline())
    attacks: tuple[str, ...] = _check(_names, default=())
    steps_of: dict[str, int] = _check(_steps_of, default_factory=dict)
    sea: str | None = _check(_optional_name, default=None)
    sea_plus: tuple[str, ...] = _check(_names, default=())
    worst_case: tuple[str, ...] = _check(_names, default=())
    worst_case_rule: str = _check(_rule, default="miou")
    checks: Checks | None = _check(_block(Checks), default=None)
    claims: dict | None = _check(_claims, default=None)
    sweep: Sweep | None = _check(_block(Sweep), default=None)
    ablation: Ablation | None = _check(_block(Ablation), default=None)
    tuning: tuple[str, ...] = _check(_names, default=())
    timings: bool = _check(_flag, default=False)
    min_norm: MinNorm | None = _check(_block(MinNorm), default=None)
    size: bool = _check(_flag, default=False)
    dataset: str = _check(_name, default="synthetic", metadata=FIGURE_ONLY)
    dpi: int = _check(_count, default=120, metadata=FIGURE_ONLY)
    per_class: PerClass | None = _check(_block(PerClass), default=None, metadata=FIGURE_ONLY)
    samples: Samples | None = _check(_block(Samples), default=None, metadata=FIGURE_ONLY)
    qualitative_title: str | None = _check(_text, default=None, metadata=FIGURE_ONLY)
    erosion_title: str | None = _check(_text, default=None, metadata=FIGURE_ONLY)

    @classmethod
    def from_dict(cls, data: dict | ReportSpec) -> ReportSpec:
        """The spec of a mapping (as :meth:`to_dict` writes it); a bad key or value: one ``ValueError`` naming it."""
        return _read(cls, data, "")

    def to_dict(self, tables_only: bool = False) -> dict:
        """Plain lists and dicts (for YAML/JSON); ``tables_only`` leaves out what only the figures read."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not (tables_only and f.metadata.get("figures_only"))}

    def steps_at_headline(self, setting: str) -> int:
        """The steps ``setting`` runs at the headline: its own in ``steps_of``, else the headline's."""
        return self.steps_of.get(setting, self.headline.steps)

    def worst_case_settings(self) -> list[str]:
        """The settings the worst case ranges over: ``worst_case`` (default: the main attacks) plus SEA."""
        out = list(self.worst_case or self.attacks)
        if self.sea and self.sea not in out:
            out.append(self.sea)
        return out


def as_spec(spec: dict | ReportSpec) -> ReportSpec:
    """``spec`` as a :class:`ReportSpec` (a mapping is read with :meth:`ReportSpec.from_dict`)."""
    return spec if isinstance(spec, ReportSpec) else ReportSpec.from_dict(spec)
