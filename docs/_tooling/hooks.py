"""MkDocs hooks: the API tree for mkdocstrings, the repository files the pages link to, and the
example gallery (each script in examples/ run at build time, its figures embedded in its page).

Pages are written for GitHub first: they link to ``../benchmarks/results/x.md`` or
``../examples/x.py`` as files of the repository. The site has no such paths, so the repository
files a page links to are copied in under ``repo/`` and the links rewritten; a link to an example
script goes to the example's generated page.
"""
from __future__ import annotations

import ast
import os
import posixpath
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
API_TREE = ROOT / ".cache" / "docs-api"
MIRRORED = ("benchmarks/results",)        # repository folders the pages may link into
EXAMPLE_TIMEOUT_S = 600
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")
_examples: dict[str, dict] = {}


def example_scripts() -> list[Path]:
    """The gallery: every examples/*.py except helpers whose name starts with an underscore."""
    return sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))


def on_startup(command, dirty):
    """Lay out the installed package tree (fixedpoint_ir with backends/ and operators/ inside)
    as symlinks, because setuptools maps those two subpackages from top-level folders and the
    static collector of mkdocstrings reads folders, not the install's mapping."""
    package = API_TREE / "fixedpoint_ir"
    package.mkdir(parents=True, exist_ok=True)
    targets = {p.name: p for p in (ROOT / "fixedpoint_ir").iterdir()}
    targets.update(backends=ROOT / "backends", operators=ROOT / "operators")
    for entry in package.iterdir():
        if entry.is_symlink() and entry.name not in targets:
            entry.unlink()
    for name, target in targets.items():
        link = package / name
        if not link.is_symlink() or Path(os.readlink(link)) != target:
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target)


def _run_example(script: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"docs-example-{script.stem}-"))
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(script.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=EXAMPLE_TIMEOUT_S)
    if done.returncode != 0:
        raise PluginError(f"example {script.name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures = sorted(work.glob("*.png"))
    if not figures:
        raise PluginError(f"example {script.name} wrote no figure (*.png) in its working folder")
    return {"stdout": done.stdout.strip(), "figures": figures}


def _split_docstring(source: str) -> tuple[str, str, str]:
    """(title, body, code): the script's docstring as Markdown (reST '::' blocks become plain
    colons) and the code after it, so the page does not print the docstring twice."""
    tree = ast.parse(source)
    doc = ast.get_docstring(tree) or ""
    title, _, body = doc.partition("\n")
    code = source
    if doc and isinstance(tree.body[0], ast.Expr):
        code = "\n".join(source.splitlines()[tree.body[0].end_lineno:]).strip("\n")
    return title.strip().rstrip("."), re.sub(r"::\n", ":\n", body.strip()), code


def _example_page(script: Path, ran: dict) -> str:
    title, body, source = _split_docstring(script.read_text(encoding="utf-8"))
    figures = "\n\n".join(f"![{fig.stem}]({fig.name})" for fig in ran["figures"])
    output = f"Its output on the machine that built this site:\n\n```text\n{ran['stdout']}\n```\n\n" \
        if ran["stdout"] else ""
    return (f"# {title}\n\n{body}\n\nRun it from the repository root: `python examples/{script.name}`."
            f" This page was made by running it when the site was built.\n\n{figures}\n\n{output}"
            f"The script (its docstring is the text above):\n\n```python\n{source.rstrip()}\n```\n")


def on_files(files, config):
    for folder in MIRRORED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file():
                files.append(File.generated(config, f"repo/{path.relative_to(ROOT).as_posix()}",
                                            abs_src_path=str(path)))
    scripts = example_scripts()
    with ThreadPoolExecutor(max_workers=2) as pool:    # 2 cores: two single-threaded examples at once
        ran = dict(zip(scripts, pool.map(_run_example, scripts)))
    for script, result in ran.items():
        _examples[script.name] = result
        files.append(File.generated(config, f"examples/{script.stem}.md", content=_example_page(script, result)))
        for fig in result["figures"]:
            files.append(File.generated(config, f"examples/{fig.name}", content=fig.read_bytes()))
        files.append(File.generated(config, f"repo/examples/{script.name}", abs_src_path=str(script)))
    return files


def _site_target(page_uri: str, target: str) -> str | None:
    """The site path for a link that leaves docs/ into the repository, or None to keep it."""
    if "://" in target or target.startswith(("/", "mailto:")):
        return None
    resolved = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_uri), target))
    if resolved.startswith("docs/") or resolved.startswith(".."):
        return None
    if resolved.startswith("examples/") and resolved.endswith(".py") and Path(resolved).name in _examples:
        return f"examples/{Path(resolved).stem}.md"
    if any(resolved.startswith(folder + "/") for folder in MIRRORED):
        return f"repo/{resolved}"
    if resolved == "README.md":
        return "index.md"
    return None


def on_page_markdown(markdown, page, config, files):
    page_dir = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match) -> str:
        site = _site_target(page.file.src_uri, match.group(2))
        if site is None:
            return match.group(0)
        relative = posixpath.relpath(site, page_dir or ".")
        return f"{match.group(1)}{relative}{match.group(3) or ''}{match.group(4)}"

    return LINK.sub(rewrite, markdown)
