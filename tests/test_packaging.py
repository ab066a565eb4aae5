"""The release as a user gets it: ``python -m build`` (sdist, then the wheel built from that sdist),
the wheel installed non-editable into a fresh virtual environment and used from a folder outside
the checkout.

The expected contents come from the source tree (as a fresh clone has it), not from a list: every
file under the three package roots (``fixedpoint_ir/``, and ``backends/``, ``operators/`` installed as
``fixedpoint_ir.backends`` / ``fixedpoint_ir.operators``) must be in the wheel, and nothing else.
Everything runs offline: the build uses this environment's setuptools (``--no-isolation``) and the
new environment reuses this one's installed dependencies through a ``.pth`` file.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fixedpoint_ir

ROOT = Path(__file__).resolve().parents[1]
#: repository folder -> where its files land in the wheel
PACKAGE_ROOTS = {"fixedpoint_ir": "fixedpoint_ir", "backends": "fixedpoint_ir/backends",
                 "operators": "fixedpoint_ir/operators"}


def _checkout_files() -> list[str]:
    """The checkout's files as a fresh clone with these changes has them: tracked and new files, not
    ignored ones (without git: every file but caches, virtual environments and build outputs)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True)
    if listed.returncode == 0:
        names = [n for n in listed.stdout.decode().split("\0") if n]
    else:
        skip = {".git", "build", "dist", "__pycache__"}
        names = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
                 if not skip.intersection(p.relative_to(ROOT).parts)
                 and not any(part.startswith(".venv") or part.endswith(".egg-info")
                             for part in p.relative_to(ROOT).parts)]
    return sorted(n for n in names if (ROOT / n).is_file() and not n.endswith(".pyc"))


def _source_files() -> dict[str, str]:
    """The files under the package roots: path inside the wheel -> path in the repository."""
    files = {}
    for name in _checkout_files():
        folder, _, inner = name.partition("/")
        if folder in PACKAGE_ROOTS and inner:
            files[f"{PACKAGE_ROOTS[folder]}/{inner}"] = name
    return files


def _module_names(files) -> list[str]:
    """The importable modules among ``files`` (wheel paths), packages first."""
    names = []
    for path in sorted(files):
        if path.endswith(".py"):
            parts = path[:-3].split("/")
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names, key=lambda name: (name.count("."), name))


def _run(args, *, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([os.fspath(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(map(str, args))[:300]} exited with {done.returncode}\n"
                                  f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel that ``python -m build`` makes from this checkout (built once)."""
    # Built from a clean copy: the build/ and *.egg-info/ folders that earlier builds leave in a
    # checkout feed setuptools files (SOURCES.txt) that a fresh clone lacks, which hid a wheel without
    # fixedpoint_ir/chains/ here.
    source = tmp_path_factory.mktemp("source")
    for name in _checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    # The release command itself; it needs the `release` extra (in `dev`): build, setuptools>=77.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source], cwd=source)
    (wheel,), (sdist,) = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> dict[str, Path]:
    """A fresh virtual environment with the wheel installed non-editable; returns its python, its
    ``fixedpoint-ir`` script and a work folder outside the checkout."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=venv).stdout.strip())
    # This environment's dependencies (torch, ...), after the venv's own site-packages: the wheel's
    # files come first. Plain path lines, so this environment's editable-install hook is not loaded.
    ours = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (purelib / "_parent_environment.pth").write_text("".join(f"{p}\n" for p in ours if Path(p).is_dir()))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "--quiet", dist["wheel"]], cwd=venv)
    work = tmp_path_factory.mktemp("outside")
    assert ROOT not in work.parents
    return {"venv": venv, "python": python, "script": bindir / "fixedpoint-ir", "work": work}


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_wheel_holds_every_module_and_data_file(dist):
    """Every file of the package roots (modules of every subpackage, weights, data) and nothing else."""
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
    dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    shipped = names - dist_info
    expected = set(_source_files())
    assert any(f.startswith("fixedpoint_ir/weights/") for f in expected)   # the test sees the data
    missing, extra = sorted(expected - shipped), sorted(shipped - expected)
    assert not missing, f"files of the source tree missing from the wheel: {missing}"
    assert not extra, f"files in the wheel that are not in the package roots: {extra}"
    assert {n.split("/")[0] for n in shipped} == {"fixedpoint_ir"}        # no generic top-level names
    info = dist["wheel"].name.split("-")[0] + "-" + fixedpoint_ir.__version__ + ".dist-info"
    assert f"{info}/licenses/LICENSE" in dist_info
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        metadata = wheel.read(f"{info}/METADATA").decode()
        scripts = wheel.read(f"{info}/entry_points.txt").decode()
    assert f"\nVersion: {fixedpoint_ir.__version__}\n" in metadata     # one version source
    assert "fixedpoint-ir = fixedpoint_ir.__main__:run" in scripts


def test_sdist_holds_what_rebuilds_the_wheel(dist):
    """The sources, data and build files (``python -m build`` made the wheel above from this sdist),
    and no tests (MANIFEST.in says why)."""
    import tarfile

    with tarfile.open(dist["sdist"]) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    needed = set(_source_files().values()) | {"pyproject.toml", "setup.py", "README.md", "LICENSE"}
    assert top == f"fixedpoint_ir-{fixedpoint_ir.__version__}"
    assert not sorted(needed - names), f"missing from the sdist: {sorted(needed - names)}"
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_imports_every_module(installed):
    modules = _module_names(_source_files())
    assert "fixedpoint_ir.chains" in modules and "fixedpoint_ir.backends.picard" in modules
    script = (
        "import importlib, sys, fixedpoint_ir\n"
        f"venv = {os.fspath(installed['venv'])!r}\n"
        "assert fixedpoint_ir.__file__.startswith(venv), fixedpoint_ir.__file__\n"
        "from importlib.metadata import version\n"
        "assert version('fixedpoint-ir') == fixedpoint_ir.__version__\n"
        "failed = []\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        module = importlib.import_module(name)\n"
        "        assert module.__file__.startswith(venv), module.__file__\n"
        "    except Exception as error:\n"
        "        failed.append(f'{name}: {error!r}')\n"
        "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n")
    _run([installed["python"], "-c", script], cwd=installed["work"], env=_clean_env())


def test_installed_demo_and_restore(installed):
    """The command line's demo and one API restore with the shipped prior, from outside the checkout."""
    work = installed["work"]
    done = _run([installed["script"], "demo", "-o", work / "demo", "--size", "32", "--steps", "2"],
                cwd=work, env=_clean_env())
    assert "PSNR" in done.stdout and (work / "demo" / "astronaut_sr4_compare.png").is_file()
    script = (
        "import torch, fixedpoint_ir\n"
        "from fixedpoint_ir import Prior, Sampler\n"
        "from fixedpoint_ir.operators import degrade, make_operator\n"
        "from fixedpoint_ir.photos import holdout_crop\n"
        f"assert fixedpoint_ir.__file__.startswith({os.fspath(installed['venv'])!r})\n"
        "x = holdout_crop('flower', 32, scale=0.125)[None]\n"
        "op = make_operator('sr4', tuple(x.shape[1:]))\n"
        "y = degrade(x, op)\n"
        "sampler = Sampler(Prior.default(), op, steps=5)\n"
        "result = sampler.restore(y, generator=torch.Generator().manual_seed(0))\n"
        "reference = sampler.sequential(y, generator=torch.Generator().manual_seed(0))\n"
        "gap = float((result.image - reference.image).abs().max() / reference.image.abs().max())\n"
        "assert result.converged and gap <= sampler.solver.tol, (result.summary(), gap)\n"
        "print(result.summary(), gap)\n")
    _run([installed["python"], "-c", script], cwd=work, env=_clean_env())
