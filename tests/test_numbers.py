"""The one number grammar of configs and command lines (eroseg.numbers)."""

import pytest

from eroseg.numbers import (
    budget_text,
    budgets_as_numbers,
    budgets_as_text,
    eps_in_255,
    eps_label,
    eps_tag,
    parse_number,
    resolve_attack_params,
)


@pytest.mark.parametrize("text, eps, expected", [
    ("8/255", None, 8 / 255), (" 8 / 255 ", None, 8 / 255), ("0.03", None, 0.03), (0.5, None, 0.5),
    ("eps/4", 0.04, 0.01), ("eps*0.5", 0.04, 0.02), ("eps", 0.04, 0.04), ("1/2", None, 0.5),
])
def test_parse_number_forms(text, eps, expected):
    assert parse_number(text, eps=eps) == pytest.approx(expected)


@pytest.mark.parametrize("text, match", [
    ("8/0", "divides by zero"), ("8..0/255", "cannot parse"), ("8//255", "cannot parse"),
    ("eps/4", "no eps"), ("-1", "> 0"), (True, "expected a number"), ("0/0", "divides by zero"),
])
def test_parse_number_refuses_with_one_line(text, match):
    with pytest.raises(ValueError, match=match) as err:
        parse_number(text, name="evaluation.headline.eps")
    assert "\n" not in str(err.value) and "evaluation.headline.eps" in str(err.value)


def test_budget_above_pixel_range_gets_the_1_over_255_hint():
    with pytest.raises(ValueError, match=r"did you mean '8/255'"):
        resolve_attack_params({"eps": 8, "steps": 3})
    with pytest.raises(ValueError, match="step_size"):
        resolve_attack_params({"eps": "8/255", "step_size": 2})
    # eps = 1 (the unbounded gradient-masking check) is allowed
    assert resolve_attack_params({"eps": 1, "step_size": "eps/4"}) == {"eps": 1.0, "step_size": 0.25}


def test_eps_tag_and_label():
    assert eps_tag("8/255") == "8" and eps_tag(0.5 / 255) == "0.5" and eps_tag(1) == "255"
    assert eps_label(4 / 255) == "4/255"
    assert eps_in_255(8 / 255) == 8.0 and eps_in_255(0.5 / 255) == 0.5 and eps_in_255(1 / 3) == 85.0
    assert eps_in_255(0.00123) == 0.314 and eps_label(0.00123) == "0.314/255"


def test_relative_step_size_by_zero():
    with pytest.raises(ValueError, match="divides by zero"):
        parse_number("eps/0", eps=0.03, name="step_size")


@pytest.mark.parametrize("params, name", [({"eps": 8, "step_size": 2 / 255}, "eps"),
                                          ({"eps": 8 / 255, "step_size": 2}, "step_size")])
def test_one_budget_rule_for_the_api_the_cli_and_the_config(params, name):
    """create_attack refuses a Linf budget above 1 with the very line the CLI and the config give."""
    from eroseg.attacks import create_attack

    with pytest.raises(ValueError) as api:
        create_attack("pgd", steps=2, **params)
    with pytest.raises(ValueError) as cli:
        resolve_attack_params(params)
    assert str(api.value) == str(cli.value) and f"{name}: " in str(api.value)
    assert f"did you mean '{params[name]:g}/255'?" in str(api.value)
    with pytest.raises(ValueError, match=r"config key x: 8 is above 1.*did you mean '8/255'\?"):
        parse_number(8, name="config key x", max_value=1.0)


def test_l2_budgets_above_1_are_valid_everywhere():
    from eroseg.attacks import create_attack

    params = {"eps": 1.5, "step_size": "eps/4", "norm": "l2"}
    assert resolve_attack_params(params) == {"eps": 1.5, "step_size": 0.375, "norm": "l2"}
    create_attack("pgd", steps=2, **resolve_attack_params(params))


def test_spec_budgets_written_as_fractions_and_read_back_exactly():
    """The workflow writes a table spec's eps as "8/255" (the report shows it); the package reads the same float."""
    spec = {"headline": {"eps": 8 / 255, "steps": 3}, "checks": {"eps": [16 / 255, 1.0], "setting": "pgd"},
            "sweep": {"eps_fixed": 4 / 255, "method": "standard"}, "samples": {"eps": 0.0123}, "claims": None}
    text = budgets_as_text(spec)
    assert text["headline"] == {"eps": "8/255", "steps": 3}
    assert text["checks"]["eps"] == ["16/255", "255/255"] and text["sweep"]["eps_fixed"] == "4/255"
    assert text["samples"]["eps"] == 0.0123  # not k/255: kept as the number
    assert budget_text(8 / 255) == "8/255"
    assert budgets_as_numbers(text) == spec
    with pytest.raises(ValueError, match="--spec eps: 8 is above 1"):
        budgets_as_numbers({"headline": {"eps": 8}})
