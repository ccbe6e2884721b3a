"""The report's spec and registries (eroseg.report): validation, captions, and the route of a new table."""

from __future__ import annotations

import pytest

from eroseg.report import FIGURES, TABLES, ReportSpec, register_table
from eroseg.report.spec import Headline
from tests.conftest import ROOT


def test_spec_defaults_are_owned_once():
    spec = ReportSpec.from_dict({"attacks": ["pgd", "eroseg"], "sea": "sea"})
    assert spec.headline == Headline(8 / 255, 10)
    assert spec.worst_case_settings() == ["pgd", "eroseg", "sea"]  # worst_case empty: the main attacks, SEA added
    assert spec.steps_at_headline("pgd") == 10
    assert ReportSpec.from_dict({"steps_of": {"fgsm": 1}}).steps_at_headline("fgsm") == 1
    assert ReportSpec.from_dict({"claims": {"eroseg_at": "x"}}).claims["resamples"] == 4000  # eroseg.stats' default


@pytest.mark.parametrize("data, message", [
    ({"worst_case_rul": "miou"}, "report spec key worst_case_rul: unknown; did you mean worst_case_rule?"),
    ({"worst_case_rule": "max"}, "report spec key worst_case_rule: expected one of miou, pixel_acc, got 'max'"),
    ({"sweep": {"method": "standard", "atacks": []}}, "report spec key sweep.atacks: unknown; did you mean "
                                                       "sweep.attacks?"),
    ({"headline": {"eps": 8 / 255, "steps": 0}}, "report spec key headline.steps: expected a whole number >= 1"),
    ({"headline": {"eps": 2.0, "steps": 3}}, "report spec key headline.eps"),
    ({"methods": "standard"}, "report spec key methods: expected a list of names"),
    ({"checks": {"eps": [1], "steps": 2}}, "report spec key checks.setting: required"),
    ({"dpi": True}, "report spec key dpi: expected a whole number"),
])
def test_a_bad_spec_is_one_error_naming_its_key(data, message):
    with pytest.raises(ValueError) as err:
        ReportSpec.from_dict(data)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_every_registered_caption_file_exists():
    for item in [*TABLES.values(), *FIGURES.values()]:
        assert (ROOT / "workflow" / "report" / f"{item.caption}.rst").is_file(), item.name


def test_a_name_registered_twice_is_refused():
    registry = {}
    register_table("t", title="t", registry=registry)(lambda inputs: None)
    with pytest.raises(ValueError, match="report item 't' registered twice"):
        register_table("t", title="t", registry=registry)(lambda inputs: None)
