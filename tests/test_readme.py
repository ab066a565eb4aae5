"""The README is a front page whose every command block runs as written (see tests/snippets.py)."""
from __future__ import annotations

import re

from snippets import ROOT, fence_count, marked_blocks, run_blocks

README = ROOT / "README.md"
KINDS = {"setup", "test", "run", "slow", "excerpt", "build"}   # build: the docs build block, run by test_docs
MAX_LINES = 200


def readme_blocks():
    return marked_blocks(README, "readme")


def test_every_block_is_marked():
    blocks = readme_blocks()
    assert len(blocks) == fence_count(README), "a bash/python block of the README has no marker"
    assert {b.kind for b in blocks} <= KINDS
    assert [b.lang for b in blocks if b.kind in ("setup", "test")] == ["bash", "bash"]


def test_ci_runs_the_readme_setup_and_test_lines():
    """.ci/run reads its set-up and test commands from the README, it holds no copy of them."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_block setup" in ci and "readme_block test" in ci
    for block in readme_blocks():
        if block.kind in ("setup", "test"):
            for line in block.body.splitlines():
                assert line.strip() not in ci, f".ci/run copies the README line {line!r}"
    setup = next(b.body for b in readme_blocks() if b.kind == "setup").splitlines()
    assert setup[0].startswith("pip install") and "torch==2.13.0" in setup[0]   # CPU torch first
    assert setup[-1] == 'pip install -e ".[dev]"'


def test_readme_is_a_front_page_linking_into_the_docs():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert sum(t.startswith("docs/") for t in targets) >= 10, "the README should link into the manual"
    missing = [t for t in targets if t and not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
    assert [b.body for b in readme_blocks() if b.kind == "build"] == ['pip install -e ".[docs]"\nmkdocs build --strict']


def test_readme_blocks_run_in_order(tmp_path):
    """The ``run`` blocks (and, with FIXEDPOINT_IR_README_SLOW=1, the ``slow`` ones) in README order."""
    blocks = readme_blocks()
    assert sum(b.kind == "run" for b in blocks) >= 2
    work = run_blocks(blocks, tmp_path, "README.md")
    assert (work / "fixedpoint-ir-demo" / "astronaut_sr4_compare.png").is_file()
