"""The README's code blocks run as written, in order (issue 13), and the docs cover what they promise.

Every ```bash and ```python block of README.md is run, command by command and
block by block, in one scratch folder, so a command may use what the commands
before it wrote. A command is run by default; the only ones not run are those
whose text contains a fragment of :data:`NOT_RUN`, each skipped with its reason
shown by pytest. How each kind is run:

- ``eroseg ...`` / ``python -m eroseg ...``: in this process through
  :func:`eroseg.cli.main` (the console script's entry point), exit status 0
  expected; in-process because every fresh interpreter pays seconds of imports.
- ``snakemake ...``: the fast tier parses the arguments with Snakemake's own
  parser and checks that the files they name exist; the slow tier
  (``pytest -m slow``) runs them in a scratch copy of the workflow, at the tiny
  config (``--configfile config/tests.yaml`` is added where no config is given,
  since the embedded default takes about 15 minutes).
- ```python blocks: executed with a small preamble (:func:`preamble`) that
  gives ``my_net``, ``images`` and ``labels``, the names the README says are
  the reader's own; ``adv`` must then lie within the budget and in [0, 1].

Anything else (another program, shell operators) fails, naming the command: add
a ``NOT_RUN`` entry with a reason or write the command so it can run here.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT, snakemake_env

README = ROOT / "README.md"

#: Commands not run: a fragment of the command -> why. The first matching fragment wins.
NOT_RUN = {
    "make run": "runs the whole embedded default (about 15 minutes); the slow tier runs its snakemake steps",
    "make test": "runs the whole test suite",
    "python -m venv": "creates a virtual environment (this test already runs inside one)",
    "pip install": "installs packages from the network",
    "conda ": "needs conda and the network",
    "pytest": "runs the test suite (this test is part of it)",
    "workflow/profiles/gpu": "needs GPUs",
    "workflow/profiles/slurm": "needs a SLURM cluster",
    "VOC_ROOT": "needs the PASCAL VOC dataset",
}

SHELL_OPERATORS = ("&&", "||", "|", ";", ">", "<", "$(", "`")


@dataclasses.dataclass(frozen=True)
class Snippet:
    """One unit the test runs: a shell command or a whole python block, with its README line."""

    kind: str  # "shell" or "python"
    text: str
    line: int

    @property
    def id(self) -> str:
        head = self.text.strip().splitlines()[0] if self.kind == "python" else self.text
        return f"L{self.line}:{head[:60]}"


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, line of the first code line, code)`` of every fenced block, in order."""
    out, lang, start, lines = [], None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1), n + 1, []
        elif line.startswith("```") and lang is not None:
            out.append((lang, start, "\n".join(lines)))
            lang = None
        elif lang is not None:
            lines.append(line)
    if lang is not None:
        raise ValueError(f"README.md:{start - 1}: code block never closed")
    return out


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` outside quotes, at the start or after a space)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(code: str, first_line: int) -> list[tuple[int, str]]:
    """``(line, command)`` of a shell block: continuation lines joined, comments and blank lines dropped."""
    out, parts, start = [], [], None
    for k, raw in enumerate(code.splitlines()):
        line = _strip_comment(raw)
        if not parts:
            start = first_line + k
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line.strip())
        cmd = " ".join(p for p in parts if p)
        parts = []
        if cmd:
            out.append((start, cmd))
    if parts:
        raise ValueError(f"README.md:{start}: a command ends with a line continuation")
    return out


def snippets(text: str) -> list[Snippet]:
    out = []
    for lang, line, code in code_blocks(text):
        if lang in ("bash", "sh", "shell"):
            out += [Snippet("shell", cmd, n) for n, cmd in shell_commands(code, line)]
        elif lang == "python":
            out.append(Snippet("python", code, line))
    return out


def not_run_reason(cmd: str) -> str | None:
    return next((why for frag, why in NOT_RUN.items() if frag in cmd), None)


def preamble() -> dict:
    """What the README's python blocks call the reader's own: a tiny network on normalised images and a batch."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    my_net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 1))
    images = torch.rand(2, 3, 32, 32, generator=g)
    labels = torch.randint(0, 5, (2, 32, 32), generator=g)
    labels[:, :2] = 255  # a void border, as real labels have
    return {"my_net": my_net, "images": images, "labels": labels}


# ----------------------------------------------------------------------- runners
def run_python(snippet: Snippet) -> dict:
    ns = {"__name__": "__readme__", **preamble()}
    exec(compile(snippet.text, f"{README}:{snippet.line}", "exec"), ns)  # noqa: S102 - the README's own code
    adv, images = ns.get("adv"), ns["images"]
    if isinstance(adv, torch.Tensor):
        assert adv.shape == images.shape
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0, "adversarial images leave [0, 1]"
        assert float((adv - images).abs().max()) <= 8 / 255 + 1e-6, "adversarial images leave the 8/255 budget"
    return ns


def _argv(snippet: Snippet) -> list[str]:
    ops = [op for op in SHELL_OPERATORS if op in re.sub(r"'[^']*'|\"[^\"]*\"", "", snippet.text)]
    if ops:
        raise AssertionError(f"README.md:{snippet.line}: {snippet.text!r} uses shell operator(s) {ops}, which this "
                             "test does not run; split the command or add a NOT_RUN entry with a reason")
    return shlex.split(snippet.text)


def run_eroseg(snippet: Snippet) -> None:
    from eroseg.cli import main

    argv = _argv(snippet)
    args = argv[1:] if argv[0] == "eroseg" else argv[3:]
    try:
        rc = main(args)
    except SystemExit as err:  # argparse: unknown option, missing argument
        raise AssertionError(f"README.md:{snippet.line}: {snippet.text!r} exited with {err.code}") from None
    assert rc == 0, f"README.md:{snippet.line}: {snippet.text!r} returned {rc} (the error is logged above)"


def check_snakemake_args(snippet: Snippet) -> None:
    """Snakemake's own parser accepts the arguments, and every file or folder they name exists."""
    from snakemake.cli import get_argument_parser

    argv = _argv(snippet)
    try:
        args = get_argument_parser().parse_args(argv[1:])
    except SystemExit as err:
        raise AssertionError(f"README.md:{snippet.line}: snakemake rejects {snippet.text!r} ({err.code})") from None
    profiles = [args.profile] if isinstance(args.profile, str) else list(args.profile or [])  # a list in Snakemake 9
    for path in [*(args.configfile or []), *profiles]:
        assert (ROOT / path).exists(), f"README.md:{snippet.line}: {path} does not exist"


def run_snakemake(snippet: Snippet, workdir: Path) -> subprocess.CompletedProcess:
    argv = _argv(snippet)[1:]
    if "--configfile" not in argv:
        argv += ["--configfile", "config/tests.yaml"]  # the embedded default takes about 15 minutes
    res = subprocess.run([sys.executable, "-m", "snakemake", *argv], cwd=workdir,
                         env=snakemake_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"README.md:{snippet.line}: snakemake {' '.join(argv)} failed:\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    if "--report" in argv:
        report = workdir / argv[argv.index("--report") + 1]
        assert report.stat().st_size > 0, f"README.md:{snippet.line}: no report at {report}"
    return res


def run_fast(snippet: Snippet) -> None:
    """Run one snippet as the fast tier does (in the current folder)."""
    if snippet.kind == "python":
        run_python(snippet)
        return
    argv = _argv(snippet)
    if argv[0] == "eroseg" or argv[:3] == ["python", "-m", "eroseg"]:
        run_eroseg(snippet)
    elif argv[0] == "snakemake":
        check_snakemake_args(snippet)
    else:
        raise AssertionError(f"README.md:{snippet.line}: no runner for {snippet.text!r}; add a NOT_RUN entry "
                             "with a reason, or extend tests/test_readme.py")


# ------------------------------------------------------------------------- tests
SNIPPETS = snippets(README.read_text(encoding="utf-8"))


def _param(s: Snippet):
    return pytest.param(s, id=s.id)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for every fast-tier snippet, so later commands find what earlier ones wrote."""
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("snippet", [_param(s) for s in SNIPPETS])
def test_readme_snippet(snippet: Snippet, scratch: Path, monkeypatch):
    why = not_run_reason(snippet.text) if snippet.kind == "shell" else None
    if why:
        pytest.skip(f"not run: {why}")
    monkeypatch.chdir(scratch)
    run_fast(snippet)


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    """A folder that looks like the repository to a README command: the workflow linked, configs copied."""
    wd = tmp_path_factory.mktemp("readme_wf")
    for name in ("Snakefile", "workflow", "eroseg"):
        (wd / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "config", wd / "config")
    return wd


@pytest.mark.slow
@pytest.mark.workflow
@pytest.mark.parametrize("snippet", [_param(s) for s in SNIPPETS if s.kind == "shell"
                                     and s.text.startswith("snakemake")])
def test_readme_snakemake_runs(snippet: Snippet, workflow_copy: Path):
    why = not_run_reason(snippet.text)
    if why:
        pytest.skip(f"not run: {why}")
    run_snakemake(snippet, workflow_copy)


def test_readme_has_commands_of_each_kind():
    """The extraction finds the blocks (an empty list would make every test above pass vacuously)."""
    kinds = {s.kind for s in SNIPPETS}
    shell = [s.text for s in SNIPPETS if s.kind == "shell"]
    assert kinds == {"shell", "python"}
    assert any(c.startswith("eroseg attack") for c in shell) and any(c.startswith("snakemake") for c in shell)
    assert "make run" in shell and "make test" in shell


def test_not_run_entries_are_used():
    """A NOT_RUN fragment that matches no command any more is stale (the command was renamed or removed)."""
    shell = [s.text for s in SNIPPETS if s.kind == "shell"]
    stale = [frag for frag in NOT_RUN if not any(frag in c for c in shell)]
    assert not stale, f"NOT_RUN fragments matching no README command: {stale}"


def test_extraction_on_a_hand_written_block():
    text = ("x\n```bash\nmake run   # all\n# a comment\neroseg prepare --root 'a # b' \\\n    --splits train\n```\n"
            "```python\nprint(1)\n```\n")
    got = snippets(text)
    assert [(s.kind, s.line, s.text) for s in got] == [
        ("shell", 3, "make run"), ("shell", 5, "eroseg prepare --root 'a # b' --splits train"),
        ("python", 9, "print(1)")]


@pytest.mark.parametrize("original, typo", [
    ("--attack-params", "--atack-params"),  # an eroseg option
    ('"steps": 2,', '"stepz": 2,'),  # an attack parameter
    ("--profile workflow/profiles/default", "--profiles workflow/profiles/default"),  # a snakemake option
    ("config/tests.yaml", "config/test.yaml"),  # a file a snakemake command names
    ('create_attack("sea"', 'create_attack("sae"'),  # python: an attack name
])
def test_a_typo_in_a_readme_command_fails(original, typo, tmp_path, monkeypatch):
    """The runner fails on a README with one typo: the first snippet containing ``original``, misspelt."""
    hit = next(s for s in SNIPPETS if original in s.text and not (s.kind == "shell" and not_run_reason(s.text)))
    broken = dataclasses.replace(hit, text=hit.text.replace(original, typo, 1))
    monkeypatch.chdir(tmp_path)
    if broken.text.startswith("eroseg") and "synthesize" not in broken.text:
        # Commands after the first need the data the README's first eroseg commands write.
        for s in SNIPPETS:
            if s is hit:
                break
            if s.kind == "shell" and s.text.startswith("eroseg"):
                run_fast(s)
    with pytest.raises((AssertionError, ValueError, TypeError)):
        run_fast(broken)


def test_readme_links_exist():
    """Every relative link of the README points at a file of the repository."""
    links = re.findall(r"\]\(([^)#\s]+)\)", README.read_text(encoding="utf-8"))
    local = [x for x in links if not re.match(r"[a-z]+://", x)]
    assert local, "no relative links found"
    missing = [x for x in local if not (ROOT / x).exists()]
    assert missing == [], f"README links to missing files: {missing}"


def _schema_keys(node: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the schema's leaves (objects with fixed properties are descended into)."""
    out = []
    for key, sub in (node.get("properties") or {}).items():
        path = f"{prefix}{key}"
        out += _schema_keys(sub, f"{path}.") if sub.get("properties") else [path]
    return out


def test_config_readme_documents_every_schema_key():
    """config/README.md names every key of the schema (last component at least, in backticks)."""
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    doc = (ROOT / "config/README.md").read_text(encoding="utf-8")
    attack_entry = [f"evaluation.attacks.<name>.{k}" for k in schema["definitions"]["attack_entry"]["properties"]]
    method_entry = [f"methods.<name>.{k}" for k in
                    schema["properties"]["methods"]["additionalProperties"]["properties"]]
    missing = []
    # methods and evaluation.attacks are maps from free names to entries: their entries' keys stand for them.
    leaves = [k for k in _schema_keys(schema) if k not in ("methods", "evaluation.attacks")]
    assert len(leaves) > 50, leaves  # the walk found the schema's keys
    for key in leaves + attack_entry + method_entry:
        last = key.rsplit(".", 1)[-1]
        # A key is documented as `a.b.c`, or as `a.b.{c, d}` / `.c` inside its parent's row.
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        if f"`{key}`" in doc or re.search(rf"`{re.escape(parent)}\.\{{[^}}]*\b{re.escape(last)}\b", doc):
            continue
        missing.append(key)
    assert not missing, f"config/README.md does not document: {missing}"
