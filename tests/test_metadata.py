"""LICENSE and CITATION.cff agree with the package's own metadata."""

from pathlib import Path

import yaml

import eroseg

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_declared_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the eroseg authors" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in pyproject and 'license-files = ["LICENSE"]' in pyproject


def test_citation_cites_this_version_and_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert str(cff["version"]) == eroseg.__version__
    paper = cff["preferred-citation"]
    assert paper["title"] == "Erosion Attack for Adversarial Training to Enhance Semantic Segmentation Robustness"
    assert paper["year"] == 2026 and paper["authors"][0]["family-names"] == "Song"
    assert "doi" not in paper  # none is known; do not invent one
