"""The user docs agree with the code and with each other (issue 21): flags that exist, the defaults
the parsers really have, the extras pyproject.toml really defines, links that resolve."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from veloxseg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
#: the pages a user reads (docs/dev/ is for developers)
USER_DOCS = ["README.md", "docs/guide.md", "docs/training.md", "docs/prediction.md", "docs/architecture.md",
             "docs/reliability.md", "docs/ablation.md"]
#: every page under docs/ that shows veloxseg commands (generated ones too)
ALL_DOCS = USER_DOCS + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
                              if str(p.relative_to(ROOT)) not in USER_DOCS)
#: flags of other programs the user docs show: torchrun, docker, tensorboard, benchmarks/predict_memory.py
OTHER_PROGRAMS = {"--nproc_per_node", "--nnodes", "--node_rank", "--rdzv_backend", "--rdzv_endpoint", "--rdzv_id",
                  "--rm", "--logdir", "--shape"}
FLAG = r"(?<![\w-])--[a-z][a-z0-9_-]*"


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of ``parser`` and of its nested sub-commands."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        found.update({o: action for o in action.option_strings})
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.update(_options(child))
    return found


@pytest.fixture(scope="module")
def commands() -> dict[str, dict[str, argparse.Action]]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: _options(p) for name, p in sub.choices.items()}


def read(page: str) -> str:
    return re.sub(r"\\\n\s*", " ", (ROOT / page).read_text())  # shell continuation lines joined


def default(commands: dict, command: str, flag: str) -> object:
    return commands[command][flag].default


@pytest.mark.parametrize("page", ALL_DOCS)
def test_every_flag_given_to_a_veloxseg_command_exists(page, commands):
    wrong = []
    for n, line in enumerate(read(page).splitlines(), 1):
        # "veloxseg CMD ..." up to the end of its code span, table cell, comment or the next shell command
        for m in re.finditer(r"veloxseg ([a-z][a-z-]+)((?:\\\||[^`|#;&])*)", line):
            command, rest = m.groups()
            if command in commands:
                wrong += [f"{page}:{n}: veloxseg {command} {flag}" for flag in re.findall(FLAG, rest)
                          if flag not in commands[command]]
    assert not wrong, "flags the parser does not have:\n" + "\n".join(wrong)


@pytest.mark.parametrize("page", USER_DOCS)
def test_every_flag_in_the_user_docs_exists_somewhere(page, commands):
    known = set().union(*commands.values()) | OTHER_PROGRAMS
    unknown = {flag for flag in re.findall(FLAG, read(page)) if flag not in known}
    assert not unknown, f"{page}: no veloxseg command has {sorted(unknown)}"



@pytest.mark.parametrize("page", USER_DOCS)
def test_documented_choices_are_the_parsers(page, commands):
    """``--flag a|b|c`` lists only values some command's ``--flag`` accepts."""
    choices: dict[str, set[str]] = {}
    for options in commands.values():
        for flag, action in options.items():
            if action.choices is not None:
                choices.setdefault(flag, set()).update(str(c) for c in action.choices)
    wrong = []
    for flag, values in re.findall(r"(--[a-z][a-z0-9-]*) ([\w.-]+(?:\\?\|[\w.-]+)+)", read(page)):
        listed = set(values.replace("\\", "").split("|"))
        if flag in choices and not listed <= choices[flag]:
            wrong.append(f"{flag} {values}: not {sorted(listed - choices[flag])}")
    assert not wrong, f"{page}: {wrong}"


def test_documented_defaults_are_the_parsers_and_the_apis(commands):
    from veloxseg.cli import demo
    from veloxseg.inference.predictor import Predictor
    from veloxseg.training import TrainConfig

    prediction, training, readme = read("docs/prediction.md"), read("docs/training.md"), read("README.md")
    overlap = default(commands, "predict", "--overlap")
    assert inspect.signature(Predictor.__init__).parameters["overlap"].default == overlap
    train_defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert train_defaults["sw_overlap"] == overlap  # validation during training windows as predict does
    row: dict[str, str] = {}  # the option table's row of each flag (its first row)
    for m in re.finditer(r"^\| `(--[a-z-]+)[^|]*\|.*$", prediction, flags=re.M):
        row.setdefault(m.group(1), m.group(0))
    assert f"default {overlap:g}" in row["--overlap"]
    assert f"default {default(commands, 'predict', '--sw-batch-size')}" in row["--sw-batch-size"]
    assert f"`{default(commands, 'predict', '--engine')}` (default)" in row["--engine"]
    assert f"default `{default(commands, 'predict', '--precision')}`" in row["--precision"]
    assert f"default `{default(commands, 'predict', '--device')}`" in row["--device"]
    assert f"overlap {train_defaults['sw_overlap']:g}" in training
    assert f"`--val-every N` (default {train_defaults['val_every']})" in training
    (lr,) = re.findall(r"`--lr` \(default ([0-9.e-]+)\)", training)
    assert float(lr) == train_defaults["lr"]
    assert "`--device` defaults to `auto`" in training and train_defaults["device"] == "auto"
    demo_minutes = {a.dest: a.default for a in _demo_parser(demo)._actions}["minutes"]
    assert f"`--minutes M` sets the budget, default {demo_minutes:g}" in readme


def _demo_parser(module) -> argparse.ArgumentParser:
    sub = argparse.ArgumentParser().add_subparsers()
    module.register(sub)
    return sub.choices["demo"]


def test_readme_quick_start_is_two_commands():
    block = read("README.md").split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert lines == ["bash scripts/setup.sh && .venv/bin/veloxseg demo",
                     "bash scripts/setup.sh test && .venv/bin/python -m pytest -q"]


def test_extras_and_torch_range_the_docs_name_are_pyprojects():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: {re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower() for req in reqs}
              for name, reqs in project["optional-dependencies"].items()}
    named = set()
    for page in USER_DOCS:
        for group in re.findall(r"(?:veloxseg|\.)\[([a-z,]+)\]", read(page)):
            named.update(group.split(","))
    assert named and named <= set(extras), f"extras the docs name that pyproject lacks: {named - set(extras)}"
    # what the docs say each extra brings (README's install paragraph, prediction.md's export section)
    assert {"onnx", "onnxscript", "onnxruntime"} <= extras["deploy"]
    assert {"matplotlib", "tensorboard"} <= extras["train"] and {"pydicom", "highdicom"} <= extras["dicom"]
    assert extras["train"] | extras["deploy"] | extras["dicom"] | {"pytest"} <= extras["test"]
    (torch,) = [req for req in project["dependencies"] if req.startswith("torch")]
    assert f"`{torch}`" in read("README.md")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", USER_DOCS)
def test_relative_links_reach_a_file_and_heading(page):
    text = (ROOT / page).read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path if path else ROOT / page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)
            if anchor not in {_slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{page}: links to nothing: {broken}"
