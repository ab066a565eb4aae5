"""The marked command blocks of the README and of docs/*.md, and how the tests run them.

Each fenced ``bash`` / ``python`` block carries a marker comment on the line before it:
``<!-- readme: KIND -->`` in README.md, ``<!-- docs: KIND -->`` in docs/ (the kinds are listed in
docs/development.md). ``run`` blocks run as written, in order, in one fresh temporary folder per
file; ``slow`` ones too, with FIXEDPOINT_IR_README_SLOW=1.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(bash|python)\s*$", re.M)
SLOW = os.environ.get("FIXEDPOINT_IR_README_SLOW", "") not in ("", "0")


@dataclass(frozen=True)
class Block:
    kind: str
    lang: str
    body: str


def marked_blocks(path: Path, prefix: str) -> list[Block]:
    marker = re.compile(r"<!-- %s: (\w+) -->\s*\n```(\w+)\n(.*?)\n```" % re.escape(prefix), re.S)
    return [Block(*m.groups()) for m in marker.finditer(path.read_text(encoding="utf-8"))]


def fence_count(path: Path) -> int:
    return len(FENCE.findall(path.read_text(encoding="utf-8")))


def environment(tmp_path: Path) -> dict:
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir(exist_ok=True)
    if shutil.which("torchrun") is None:   # torchrun is torch's console script for this module
        shim = bin_dir / "torchrun"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
        shim.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return dict(os.environ, PATH=path, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
                PYTHONUNBUFFERED="1", MPLBACKEND="Agg")


def run_blocks(blocks: list[Block], tmp_path: Path, where: str) -> Path:
    """Run the ``run`` blocks (and, with FIXEDPOINT_IR_README_SLOW=1, the ``slow`` ones) in order
    in a fresh folder that looks like a clone (examples/ linked in); return that folder."""
    work = tmp_path / "fresh"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    env = environment(tmp_path)
    for block in blocks:
        if block.kind not in ("run", "slow") or (block.kind == "slow" and not SLOW):
            continue
        command = (["bash", "-euo", "pipefail", "-c", block.body] if block.lang == "bash"
                   else [sys.executable, "-c", block.body])
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{where}: block failed ({done.returncode}):\n{block.body}\n{done.stderr[-3000:]}"
        assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    leftovers = [p.name for p in work.rglob("*.partial*")]
    assert not leftovers, leftovers
    return work
