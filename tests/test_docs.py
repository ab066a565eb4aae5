"""The documentation site: every command block of docs/*.md runs (or names a real script), the
site builds with ``mkdocs build --strict`` (which also runs every example) and, where Chromium is
installed, the built pages show their figures in a browser."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from snippets import ROOT, SLOW, fence_count, marked_blocks, run_blocks

DOCS = ROOT / "docs"
KINDS = {"setup", "test", "readme", "run", "slow", "excerpt", "benchmark", "build"}
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_tooling" not in p.parts)
sys.path.insert(0, str(DOCS / "_tooling"))
import browser_check  # noqa: E402


def _id(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


def _blocks(page: Path):
    return marked_blocks(page, "docs")


def test_every_docs_block_is_marked():
    assert len(PAGES) >= 15
    for page in PAGES:
        blocks = _blocks(page)
        assert len(blocks) == fence_count(page), f"{_id(page)}: a bash/python block has no marker"
        assert {b.kind for b in blocks} <= KINDS, f"{_id(page)}: unknown kind"


def test_no_page_has_an_unfilled_template_field():
    """Prose outside code has no ``{name}`` left by a format string that was never filled (two
    paragraphs of the quality page once shipped as ``{ddrm}`` and ``{colour}``)."""
    for page in [*PAGES, ROOT / "README.md"]:
        prose = re.sub(r"```.*?```|`[^`\n]*`", "", page.read_text(encoding="utf-8"), flags=re.S)
        unfilled = re.findall(r"(?<![{$\\])\{[A-Za-z_][A-Za-z_0-9]*\}", prose)
        assert not unfilled, f"{page.relative_to(ROOT)}: unfilled {unfilled}"


def test_blocks_said_to_be_the_readmes_are():
    """setup / test / build: the README's block of that kind; readme: one of the README's run blocks
    (tests/test_readme.py runs it)."""
    readme = marked_blocks(ROOT / "README.md", "readme")
    seen = 0
    for page in PAGES:
        for block in _blocks(page):
            if block.kind in ("setup", "test", "build"):
                assert block.body == next(b.body for b in readme if b.kind == block.kind), \
                    f"{_id(page)}: the {block.kind} block differs from the README's"
            elif block.kind == "readme":
                assert block.body in [b.body for b in readme if b.kind == "run"], f"{_id(page)}: not a README run block"
            else:
                continue
            seen += 1
    assert seen >= 4


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:", 1)[1]
    listed = set(re.findall(r"([\w/.-]+\.md)\s*$", nav, re.M))
    assert {_id(p) for p in PAGES} <= listed, {_id(p) for p in PAGES} - listed
    examples = {f"examples/{p.stem}.md" for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_")}
    assert examples <= listed, f"examples missing from the navigation: {examples - listed}"


def _script_source(words: list[str]) -> tuple[str, str]:
    """(what, source text) of the script or module a benchmark command runs."""
    if "-m" in words:
        module = words[words.index("-m") + 1]
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"no module {module}"
        return module, Path(spec.origin).read_text(encoding="utf-8")
    script = next(w for w in words if w.endswith(".py"))
    assert (ROOT / script).is_file(), f"no script {script}"
    return script, (ROOT / script).read_text(encoding="utf-8")


def test_benchmark_commands_name_real_scripts_and_options():
    commands = 0
    for page in PAGES:
        for block in _blocks(page):
            if block.kind != "benchmark":
                continue
            for line in block.body.splitlines():
                words = shlex.split(line, comments=True)
                if not words:
                    continue
                assert any(w in ("python", "torchrun") for w in words[:2]), f"{_id(page)}: {line}"
                what, source = _script_source(words)
                after = words[words.index(what) + 1:]          # the script's own options, not torchrun's
                for option in (w.split("=")[0] for w in after if w.startswith("--")):
                    assert f'"{option}"' in source, f"{_id(page)}: {what} has no option {option}"
                commands += 1
    assert commands >= 15


RUNNABLE = [p for p in PAGES if any(b.kind in ("run", "slow") for b in _blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=_id)
def test_page_blocks_run_in_order(page, tmp_path):
    blocks = _blocks(page)
    if not any(b.kind == "run" for b in blocks) and not SLOW:
        pytest.skip("only slow blocks (FIXEDPOINT_IR_README_SLOW=1)")
    run_blocks(blocks, tmp_path, _id(page))


def _build_command() -> list[str]:
    blocks = [b for p in PAGES for b in _blocks(p) if b.kind == "build"]
    assert blocks and len({b.body for b in blocks}) == 1, "docs/ has one build command"
    lines = blocks[0].body.splitlines()
    assert lines[0] == 'pip install -e ".[docs]"'   # the docs extra: installed here as part of dev
    assert lines[-1] == "mkdocs build --strict"
    return shlex.split(lines[-1])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", *_build_command(), "--site-dir", str(out)]
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-5000:]
    return out


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def test_site_builds_strictly_with_every_example_and_figure(site):
    for script in (ROOT / "examples").glob("*.py"):
        if not script.name.startswith("_"):
            page = (site / "examples" / f"{script.stem}.html").read_text(encoding="utf-8")
            assert "<img" in page, f"the page of {script.name} shows no figure"
    assert (site / "reference" / "sampler.html").read_text(encoding="utf-8").count("Sampler") > 10
    for html in site.rglob("*.html"):
        parser = _Images()
        parser.feed(html.read_text(encoding="utf-8"))
        for src in parser.sources:
            if "://" not in src and not src.startswith("data:"):
                assert (html.parent / src.split("#")[0]).resolve().is_file(), f"{html.relative_to(site)}: {src}"


def _need_chromium():
    if browser_check.chromium() is None:
        if os.environ.get("FIXEDPOINT_IR_REQUIRE_CHROMIUM", "") not in ("", "0"):
            pytest.fail("FIXEDPOINT_IR_REQUIRE_CHROMIUM is set but chromium is not installed")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")


def test_built_site_shows_its_figures_in_chromium(site, tmp_path):
    _need_chromium()
    report = browser_check.check(site, tmp_path)
    assert browser_check.failures(report) == []
    for page, found in report.items():
        assert all(img["naturalWidth"] > 100 for img in found["images"]), page
        assert Path(found["screenshot"]).stat().st_size > 20_000, page   # a page, not a blank


def test_browser_check_catches_a_figure_that_does_not_load(site, tmp_path):
    _need_chromium()
    broken = tmp_path / "site"
    broken.mkdir()
    page = (site / "index.html").read_text(encoding="utf-8")
    (broken / "index.html").write_text(re.sub(r'(<img[^>]*src=")[^"]+"', r'\1missing.png"', page), encoding="utf-8")
    report = browser_check.check(broken, tmp_path / "shots", {"index.html": "front_page.png"})
    assert any("did not load" in problem for problem in browser_check.failures(report))
