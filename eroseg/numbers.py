"""One grammar for the numbers of configs and command lines: ``0.03``, ``"8/255"``, ``"eps/4"``, ``"eps*0.5"``.

The workflow (``workflow/rules/common.smk``) and the CLI both import this
module, so a budget written in the config means the same thing in the DAG, in
file names and inside the attack. Budgets are in pixel units (images are in
[0, 1]); a value above 1 is almost always a budget meant in 1/255 units
(``8`` for ``8/255``) and is refused with that hint.
"""

from __future__ import annotations

import re
from fractions import Fraction
from numbers import Real
from typing import Any

_REL_EPS = re.compile(r"^eps\s*([*/])\s*(.+)$")


def _fraction(text: str, name: str) -> Fraction:
    try:
        return Fraction(text.replace(" ", ""))
    except ZeroDivisionError:
        raise ValueError(f"{name}: {text!r} divides by zero") from None
    except ValueError:
        raise ValueError(f"{name}: cannot parse {text!r}; expected a number, a fraction like '8/255' "
                         f"or, for step sizes, 'eps/4' or 'eps*0.5'") from None


def parse_number(value: Any, *, eps: float | None = None, name: str = "value", max_value: float | None = None) -> float:
    """Parse ``0.03``, ``"0.03"``, ``"8/255"`` or, with ``eps`` known, ``"eps"``, ``"eps/4"`` / ``"eps*0.25"``.

    Args:
        value: the number or its text.
        eps: the budget that ``"eps/k"`` refers to (None: relative forms refused).
        name: config key or flag, named in errors.
        max_value: refuse values above this (budgets: 1.0, the pixel range).

    Returns:
        The value as a float (> 0).

    Raises:
        ValueError: not a number, a division by zero, ``eps/k`` without an eps,
            a value <= 0 or above ``max_value`` (with the 1/255 hint).
    """
    if isinstance(value, bool) or not isinstance(value, (Real, str)):
        raise ValueError(f"{name}: expected a number or a fraction like '8/255', got {value!r}")
    if isinstance(value, Real):
        out = float(value)
    else:
        s = value.strip()
        m = _REL_EPS.match(s) or _REL_EPS.match(f"{s}*1" if s == "eps" else "")
        if m:
            if eps is None:
                raise ValueError(f"{name}: {value!r} is relative to eps, but no eps is given here")
            k = _fraction(m.group(2), name)
            if k == 0 and m.group(1) == "/":
                raise ValueError(f"{name}: {value!r} divides by zero")
            out = float(eps) / float(k) if m.group(1) == "/" else float(eps) * float(k)
        else:
            out = float(_fraction(s, name))
    if not out > 0 or out != out or out == float("inf"):
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    if max_value is not None and out > max_value:
        raise ValueError(above_pixel_range(name, value, max_value))
    return out


def above_pixel_range(name: str, value: Any, max_value: float = 1.0) -> str:
    """The one message for a budget above the pixel range (CLI, config and :func:`eroseg.attacks.create_attack`).

    Linf budgets (``eps``, ``step_size``) are in pixel units, at most 1 for images in [0, 1]; a larger
    value is almost always meant in 1/255 units, so the message suggests ``'<value>/255'``.
    """
    shown = f"{value:g}" if isinstance(value, Real) and not isinstance(value, bool) else str(value).strip()
    return (f"{name}: {value!r} is above {max_value:g}, the pixel range of images in [0, 1]; "
            f"Linf budgets are in pixel units: did you mean '{shown}/255'?")


def resolve_attack_params(params: dict) -> dict:
    """Turn ``eps`` / ``step_size`` given as text (``"8/255"``, ``"eps/4"``) into floats.

    Linf budgets (the default norm) must lie in (0, 1], as :func:`eroseg.attacks.create_attack` checks them;
    L2 budgets only need to be > 0 (an L2 radius grows with the image size).
    """
    out = dict(params)
    cap = 1.0 if out.get("norm", "linf") == "linf" else None
    if "eps" in out:
        out["eps"] = parse_number(out["eps"], name="eps", max_value=cap)
    if "step_size" in out:
        out["step_size"] = parse_number(out["step_size"], eps=out.get("eps"), name="step_size", max_value=cap)
    return out


def eps_tag(eps: Any) -> str:
    """File-name tag of a budget: its value in 1/255 units, 4 decimals at most (``"8"`` for 8/255)."""
    return f"{round(parse_number(eps, name='eps') * 255, 4):g}"


def eps_from_tag(tag: str) -> float:
    """Inverse of :func:`eps_tag` (up to its rounding)."""
    return float(tag) / 255


def eps_in_255(eps: float) -> float:
    """A budget in 1/255 units, to 3 decimals (``8.0`` for 8/255): how tables and figures compare and key budgets."""
    return round(float(eps) * 255, 3)


def eps_label(eps: float) -> str:
    """``"8/255"`` for a budget of 8/255 (as table and figure labels write it)."""
    return f"{eps_in_255(eps):g}/255"


#: Keys of the aggregate / figure specs whose values are budgets (a number or a list of them).
SPEC_BUDGET_KEYS = ("eps", "eps_fixed")


def budget_text(eps: float) -> str | float:
    """``"8/255"`` for a budget of 8/255: the exact fraction where it reads back as the same float, else ``eps``.

    The workflow writes the specs of its tables and figures with it, so the
    report's job parameters show ``eps: 8/255``; :func:`budgets_as_numbers`
    reads them back.
    """
    k = round(float(eps) * 255)
    return f"{k}/255" if k > 0 and float(Fraction(k, 255)) == float(eps) else float(eps)


def _map_budgets(obj: Any, convert) -> Any:
    if isinstance(obj, dict):
        return {k: (([convert(v, k) for v in value] if isinstance(value, list) else convert(value, k))
                    if k in SPEC_BUDGET_KEYS else _map_budgets(value, convert)) for k, value in obj.items()}
    if isinstance(obj, list):
        return [_map_budgets(v, convert) for v in obj]
    return obj


def budgets_as_text(spec: Any) -> Any:
    """A copy of ``spec`` with every budget (keys :data:`SPEC_BUDGET_KEYS`, at any depth) as :func:`budget_text`."""
    return _map_budgets(spec, lambda v, k: budget_text(v) if isinstance(v, Real) and not isinstance(v, bool) else v)


def budgets_as_numbers(spec: Any, where: str = "--spec") -> Any:
    """Inverse of :func:`budgets_as_text`: ``"8/255"`` back to a float, checked as a budget in [0, 1]."""
    return _map_budgets(spec, lambda v, k: v if v is None else parse_number(v, name=f"{where} {k}", max_value=1.0))
