"""`eroseg <command> --help` explains every option, lists the attack names, and stays fast."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from eroseg.attacks import ATTACKS
from eroseg.cli import build_parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_subcommand_has_help():
    subs = subcommands()
    assert {"synthesize", "prepare", "train", "evaluate", "attack", "aggregate", "figures"} <= set(subs)
    missing = [f"{name} {a.option_strings[0]}" for name, sp in subs.items() for a in sp._actions
               if a.option_strings and not (a.help and a.help.strip() and a.help != argparse.SUPPRESS)]
    assert missing == []


@pytest.mark.parametrize("command", ["attack", "evaluate", "train"])
def test_attack_option_lists_the_registry(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    line = text[text.rindex("--attack NAME"):]  # the option list, not the usage line
    assert all(name in line[:200] for name in ATTACKS), line[:200]


def test_unknown_attack_is_refused_with_the_valid_names(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["attack", "--checkpoint", "m.pt", "--images", "d", "--attack", "pgdd",
                                   "--out-dir", "o"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'pgdd'" in err and all(n in err for n in ATTACKS)


def test_building_the_parser_imports_no_torch():
    code = "import sys; from eroseg.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


@pytest.mark.parametrize("command", ["attack", "evaluate"])
def test_model_factory_help_says_it_runs_code_from_the_current_folder(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    line = text[text.rindex("--model-factory MODULE:FUNCTION"):]
    assert "RUNS CODE" in line[:700] and "current folder is appended to sys.path" in line[:700], line[:700]


def test_model_factory_docs_say_it_runs_code_from_the_current_folder():
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[1] / "docs" / "own_model.md").read_text().split())
    assert "**It runs code.**" in text and "appends the current folder to `sys.path`" in text


def test_help_shows_no_raw_rst():
    """Docstrings feed the help texts; their RST markup (``x``, :func:`x`) must not reach the console."""
    texts = [build_parser().format_help(), *(sp.format_help() for sp in subcommands().values())]
    raw = [line.strip() for text in texts for line in text.splitlines() if "``" in line or ":func:`" in line
           or ":class:`" in line]
    assert raw == []
