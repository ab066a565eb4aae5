"""Every command block of the README runs as written, in order, in a fresh temporary folder.

Each fenced ``bash`` / ``python`` block carries a marker comment on the line before it:
``setup`` and ``test`` (run by ``.ci/run``), ``run`` (run here), ``slow`` (run here with
``FIXEDPOINT_IR_README_SLOW=1``) or ``excerpt`` (a fragment of a larger script, not runnable alone).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKED = re.compile(r"<!-- readme: (\w+) -->\s*\n```(\w+)\n(.*?)\n```", re.S)
FENCE = re.compile(r"^```(bash|python)\s*$", re.M)
KINDS = {"setup", "test", "run", "slow", "excerpt"}
SLOW = os.environ.get("FIXEDPOINT_IR_README_SLOW", "") not in ("", "0")


def readme_blocks() -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2), m.group(3)) for m in MARKED.finditer((ROOT / "README.md").read_text())]


def test_every_block_is_marked():
    text = (ROOT / "README.md").read_text()
    blocks = readme_blocks()
    assert len(blocks) == len(FENCE.findall(text)), "a bash/python block of the README has no marker"
    assert {kind for kind, _, _ in blocks} <= KINDS
    assert [lang for kind, lang, _ in blocks if kind in ("setup", "test")] == ["bash", "bash"]


def test_ci_runs_the_readme_setup_and_test_lines():
    """.ci/run reads its set-up and test commands from the README, it holds no copy of them."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_block setup" in ci and "readme_block test" in ci
    for kind, _, body in readme_blocks():
        if kind in ("setup", "test"):
            for line in body.splitlines():
                assert line.strip() not in ci, f".ci/run copies the README line {line!r}"
    setup = next(body for kind, _, body in readme_blocks() if kind == "setup").splitlines()
    assert setup[0].startswith("pip install") and "torch==2.13.0" in setup[0]   # CPU torch first
    assert setup[-1] == 'pip install -e ".[dev]"'


def _environment(tmp_path: Path) -> dict:
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    if shutil.which("torchrun") is None:   # torchrun is torch's console script for this module
        shim = bin_dir / "torchrun"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
        shim.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return dict(os.environ, PATH=path, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
                PYTHONUNBUFFERED="1", MPLBACKEND="Agg")


def test_readme_blocks_run_in_order(tmp_path):
    """The ``run`` blocks (and, with FIXEDPOINT_IR_README_SLOW=1, the ``slow`` ones) in README order."""
    work = tmp_path / "fresh"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")   # the README's commands run in a clone
    env = _environment(tmp_path)
    ran = 0
    for kind, lang, body in readme_blocks():
        if kind not in ("run", "slow") or (kind == "slow" and not SLOW):
            continue
        command = ["bash", "-euo", "pipefail", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"README block failed ({done.returncode}):\n{body}\n{done.stderr[-3000:]}"
        assert "internal error" not in done.stderr and "Traceback" not in done.stderr
        ran += 1
    assert ran >= 4
    for name in ("fixedpoint-ir-demo/astronaut_sr4_compare.png", "restored.png", "fig.png", "low_res_x4.png",
                 "restored_scans/a.png", "restored_scans/b.png", "my_scan_restored.png", "restored_my_data.png"):
        assert (work / name).is_file(), name
    leftovers = [p.name for p in work.rglob("*.partial*")]
    assert not leftovers, leftovers
