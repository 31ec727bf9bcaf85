"""The documented commands run as written (at CI size), page by page.

Convention (tests/docs_overrides.yaml has it in full): every fenced block tagged ``bash``, ``sh``,
``shell`` or ``console`` in README.md, docs/*.md and bundles/*/docs/README.md holds commands. The
blocks of one page run in order in one scratch folder (the repository's ``bundles/``,
``transforms/`` and ``benchmarks/`` linked in, the tiny demo cohort copied to ``demo_data/``), with
the overrides of tests/docs_overrides.yaml appended. A block preceded by
``<!-- docs-test: skip (REASON) -->`` is reported as skipped with its reason.

One test per block (id ``page:line``); a block also runs the page's earlier blocks first when they
have not run in this session (so ``-k`` on one block works). The blocks that train are marked slow.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = Path(__file__).with_name("docs_overrides.yaml")
SHELL_TAGS = ("bash", "sh", "shell", "console")
SKIP_RE = re.compile(r"^\s*<!--\s*docs-test:\s*skip\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")
FENCE_RE = re.compile(r"^(?P<indent>\s*)```(?P<tag>[\w+-]*)\s*$")
#: a line like this in an untagged block means the block lacks its ``bash`` tag
COMMAND_LINE_RE = re.compile(r"^\s*(\w+=\S*\s+)*(hicur|python3?|make|torchrun|pip|curl)( |$)")
#: links into each page's scratch folder
LINKED = ("bundles", "transforms", "benchmarks", "hicur_monai")
#: blocks whose commands match this run longer than a few seconds (marked slow)
SLOW_RE = re.compile(r"monai\.bundle run|hicur (segment|demo |judge demo|curate|curriculum run)"
                     r"|hicur_monai\.vlm\.demo|benchmarks/")


@dataclass
class Block:
    """One fenced command block of a page."""

    page: str
    line: int
    commands: list[str]
    skip: str | None = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Rule:
    """One entry of tests/docs_overrides.yaml."""

    match: re.Pattern
    unless: re.Pattern | None = None
    append: str = ""
    replace: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    timeout: int | None = None


def doc_pages() -> list[Path]:
    """README.md, docs/*.md and bundles/*/docs/README.md, in reading order."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("bundles/*/docs/README.md"))]


def strip_comment(line: str) -> str:
    """``line`` without its shell comment (a ``#`` at a word start, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def block_commands(lines: list[str], tag: str) -> list[str]:
    """The commands of a block's lines: comments dropped, ``\\`` continuations joined."""
    if tag == "console":
        lines = [ln.strip()[2:] for ln in lines if ln.strip().startswith("$ ")]
    commands, current = [], ""
    for raw in lines:
        line = strip_comment(raw.strip())
        if not line and not current:
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current += line
        if current.strip():
            commands.append(current.strip())
        current = ""
    if current.strip():
        commands.append(current.strip())
    return commands


def parse_page(path: Path, root: Path = REPO) -> tuple[list[Block], list[str]]:
    """The command blocks of a page, and problems with the convention (untagged commands, bare skips)."""
    page = str(path.relative_to(root))
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, problems, i = [], [], 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), len(lines))
        body, tag = lines[i + 1:end], m["tag"].lower()
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP_RE.match(prev)
        if skip and not (skip["reason"] or "").strip():
            problems.append(f"{page}:{i + 1}: docs-test skip marker without a (reason)")
        if tag in SHELL_TAGS:
            reason = ((skip["reason"] or "").strip() or "(no reason given)") if skip else None
            blocks.append(Block(page, i + 1, block_commands(body, tag), reason))
        elif not tag and any(COMMAND_LINE_RE.match(ln) for ln in body):
            problems.append(f"{page}:{i + 1}: untagged block with commands: tag it ```bash (and mark it "
                            "<!-- docs-test: skip (reason) --> if it cannot run in CI)")
        i = end + 1
    return blocks, problems


def load_rules(path: Path = OVERRIDES) -> list[Rule]:
    """The override rules, validated."""
    rules = []
    for n, entry in enumerate(yaml.safe_load(path.read_text())["rules"]):
        unknown = set(entry) - {"match", "unless", "append", "replace", "env", "timeout"}
        if unknown or "match" not in entry:
            raise ValueError(f"{path}: rule {n}: needs 'match', unknown keys {sorted(unknown)}")
        unless = re.compile(entry["unless"]) if entry.get("unless") else None
        rules.append(Rule(re.compile(entry["match"]), unless, entry.get("append", ""),
                          [tuple(r) for r in entry.get("replace", [])],
                          {k: str(v) for k, v in (entry.get("env") or {}).items()}, entry.get("timeout")))
    return rules


def load_pages(path: Path = OVERRIDES) -> dict[str, dict[str, str]]:
    """Per-page settings of the overrides file (``pages: {page: {demo_data: ARGS}}``)."""
    return yaml.safe_load(path.read_text()).get("pages") or {}


def apply_rules(command: str, rules: list[Rule]) -> tuple[str, dict[str, str], int]:
    """The command as CI runs it, its extra environment and its timeout."""
    env: dict[str, str] = {}
    timeout = 300
    for rule in rules:
        if not rule.match.search(command) or (rule.unless and rule.unless.search(command)):
            continue
        for pattern, repl in rule.replace:
            command = re.sub(pattern, repl, command)
        if rule.append:
            command = f"{command} {rule.append}"
        env.update(rule.env)
        timeout = rule.timeout or timeout
    return command, env, timeout


ALL_BLOCKS: list[Block] = []
PROBLEMS: list[str] = []
for _page in doc_pages():
    _blocks, _problems = parse_page(_page)
    ALL_BLOCKS += _blocks
    PROBLEMS += _problems


def test_docs_convention():
    """Every command block is tagged, every skip says why, and the overrides file parses."""
    assert not PROBLEMS, "\n".join(PROBLEMS)
    assert load_rules()
    assert ALL_BLOCKS, "no command blocks found"


def test_parser_reads_the_convention(tmp_path):
    """Continuations join, comments go, console output is not a command, skips carry their reason."""
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- docs-test: skip (needs GPU) -->\n```bash\ntorchrun x \\\n  --y 1  # note\n```\n"
                    "```console\n$ hicur demo  # go\noutput line\n```\n```\nhicur curate x\n```\n"
                    "<!-- docs-test: skip -->\n```sh\nls '#not a comment'\n```\n")
    blocks, problems = parse_page(page, root=tmp_path)
    assert [(b.commands, b.skip) for b in blocks] == [
        (["torchrun x --y 1"], "needs GPU"), (["hicur demo"], None), (["ls '#not a comment'"], "(no reason given)")]
    assert len(problems) == 2 and "untagged" in problems[0] and "without a (reason)" in problems[1]
    rules = [Rule(re.compile("demo-data"), append="--preset tiny", env={"A": "1"}, timeout=9),
             Rule(re.compile("demo-data"), unless=re.compile("--seed"), replace=[("d$", "e")])]
    assert apply_rules("hicur demo-data d", rules) == ("hicur demo-data d --preset tiny", {"A": "1"}, 9)
    assert apply_rules("hicur demo-data d", rules[1:])[0] == "hicur demo-data e"
    assert apply_rules("hicur demo-data --seed 1 d", rules[1:])[0] == "hicur demo-data --seed 1 d"


class Workspace:
    """The scratch folders, one per page, and which blocks ran in them."""

    def __init__(self, root: Path, cohort: Path):
        self.root, self.cohort = root, cohort
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.bin = root / "_bin"
        self.bin.mkdir()
        # wrappers (not links: a link to a virtual environment's python loses the environment)
        for name, args in (("python", ""), ("python3", ""), ("hicur", " -m hicur_monai.cli"),
                           ("torchrun", " -m torch.distributed.run")):
            script = self.bin / name
            script.write_text(f"#!/bin/sh\nexec '{sys.executable}'{args} \"$@\"\n")
            script.chmod(0o755)

    def folder(self, page: str) -> Path:
        cwd = self.root / re.sub(r"\W+", "_", page)
        if not cwd.exists():
            cwd.mkdir()
            for name in LINKED:
                (cwd / name).symlink_to(REPO / name)
            cohort_args = load_pages().get(page, {}).get("demo_data")
            if cohort_args:  # this page needs another cohort than the shared tiny one
                subprocess.run(["bash", "-c", f"hicur demo-data demo_data {cohort_args}"], cwd=cwd, env=self.env({}),
                               check=True, capture_output=True, timeout=300)
            else:
                shutil.copytree(self.cohort, cwd / "demo_data", symlinks=True)
        return cwd

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ, PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
                   HICUR_CURATION_SALT="docs-test-salt", OMP_NUM_THREADS="2")
        env.update(extra)
        return env

    def run(self, block: Block, rules: list[Rule]) -> None:
        cwd = self.folder(block.page)
        self.failed.add(block.id)  # until it has run through
        for command in block.commands:
            actual, extra, timeout = apply_rules(command, rules)
            try:
                proc = subprocess.run(["bash", "-c", actual], cwd=cwd, env=self.env(extra), capture_output=True,
                                      text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{block.id}: timed out after {timeout} s: {actual}")
            if proc.returncode != 0:
                pytest.fail(f"{block.id}: exit {proc.returncode}: {actual}\n--- stdout (end)\n{proc.stdout[-3000:]}"
                            f"\n--- stderr (end)\n{proc.stderr[-5000:]}")
        self.failed.discard(block.id)
        self.done.add(block.id)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, demo_cohort: Path) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("docs"), demo_cohort)


def _param(block: Block):
    marks = [pytest.mark.slow] if any(SLOW_RE.search(c) for c in block.commands) else []
    return pytest.param(block, id=block.id, marks=marks)


@pytest.mark.parametrize("block", [_param(b) for b in ALL_BLOCKS])
def test_documented_block_runs(block: Block, workspace: Workspace):
    """The block's commands exit 0 (after the page's earlier blocks)."""
    if block.skip:
        pytest.skip(f"marked in the doc: {block.skip}")
    rules = load_rules()
    for earlier in ALL_BLOCKS:
        if earlier is block:
            break
        if earlier.page != block.page or earlier.skip:
            continue
        if earlier.id in workspace.failed:
            pytest.fail(f"an earlier block of the page failed: {earlier.id}")
        if earlier.id not in workspace.done:
            workspace.run(earlier, rules)
    workspace.run(block, rules)


@pytest.mark.slow
@pytest.mark.parametrize("task, question", [("segmentation", "segment the tumour in this image"),
                                            ("prognosis", "what is the survival prognosis of this patient")])
def test_ask_suggests_commands_that_run(task: str, question: str, workspace: Workspace):
    """``hicur ask`` routes to a bundle and suggests commands that run (training first, then again without it)."""
    import json

    cwd = workspace.folder(f"ask_{task}")
    image = "demo_data/mri/IMG0001/T1.nii.gz"
    rules = load_rules()
    for n, round_ in enumerate(("fresh", "trained")):
        proc = subprocess.run(["hicur", "ask", image, question, "--json"], cwd=cwd, env=workspace.env({}),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        assert answer["task"] == task and answer["commands"], answer
        if round_ == "trained":
            assert len(answer["commands"]) == 1, f"the model was trained; still suggested: {answer['commands']}"
        workspace.run(Block(f"ask_{task}", n, answer["commands"]), rules)
