"""The command line's behaviour around a run (issue 21 items 1, 3, 4, 5): task defaults travel
with the task on every path; progress bars for a person at a terminal; honest summaries; answers
before torch is imported; Ctrl-C ends with "interrupted" and status 130."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fixedpoint_ir.cli import main
from fixedpoint_ir.images import read_image, write_image
from fixedpoint_ir.operators.tasks import TASKS, list_tasks, sampling_defaults

PIL = pytest.importorskip("PIL")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from fixedpoint_ir.photos import holdout_crop

    path = tmp_path_factory.mktemp("photos") / "face.png"
    write_image(holdout_crop("astronaut", 32, scale=0.125)[None], path)
    return path


# --- item 1: the task's sampling defaults on every path -----------------------------------------
@pytest.fixture
def samplers(monkeypatch):
    """Run restore with the analytic prior (fast) and record every Sampler the CLI builds."""
    from fixedpoint_ir import GaussianMixturePrior
    from fixedpoint_ir.cli import restore

    built = []
    original = restore._make_sampler

    def make(*args, **kwargs):
        sampler = original(*args, **kwargs)
        built.append(sampler)
        return sampler

    monkeypatch.setattr(restore, "_make_sampler", make)
    monkeypatch.setattr(restore, "_load_prior", lambda *a, **k: GaussianMixturePrior(0.5, 0.05))
    return built


def _settings(sampler) -> dict:
    return dict(etw=sampler.etw, nw=sampler.nw, noise=sampler.noise, t_max=sampler.t_max,
                chain=getattr(sampler.chain_choice, "name", None), fix_null_mean=sampler.fix_null_mean)


def _expected(task: str, steps: int) -> dict:
    d = TASKS[task].sampling
    t_max = d.get("t_max")
    return dict(etw=d.get("etw", 0.1), nw=d.get("nw", 0.0), noise=d.get("noise", "per_step"),
                t_max=None if t_max is None else max(t_max, steps), chain=d.get("chain", "ddnm"),
                fix_null_mean=d.get("fix_null_mean", False))


@pytest.mark.parametrize("task", [t for t in list_tasks() if t != "inpaint_file"])
def test_task_defaults_travel_through_main_on_every_path(task, tmp_path, photo, samplers, capsys):
    """--task, the degrade sidecar, --config elsewhere, a bare task config and (masks) --mask all
    give the Sampler the task's sampling defaults."""
    y = tmp_path / "y.png"
    assert main(["degrade", str(photo), "-o", str(y), "--task", task, "--quiet"]) == 0
    run = ["--steps", "2", "--sequential", "--quiet"]
    assert main(["restore", str(y), "-o", str(tmp_path / "a.png"), *run]) == 0            # sidecar
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(y, moved / "y.png")
    params = [f"--param=seed={0}"] if TASKS[task].seeded else []
    assert main(["restore", str(moved / "y.png"), "-o", str(tmp_path / "b.png"), "--task", task,
                 *params, *run]) == 0                                                        # --task
    assert main(["restore", str(moved / "y.png"), "-o", str(tmp_path / "c.png"), "--config",
                 str(tmp_path / "y.png.json"), *run]) == 0                                   # --config
    bare = json.loads((tmp_path / "y.png.json").read_text())["task_config"]
    bare.pop("sampling")                                                                     # an old config
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    assert main(["restore", str(moved / "y.png"), "-o", str(tmp_path / "d.png"), "--config",
                 str(tmp_path / "bare.json"), *run]) == 0
    paths = 4
    if task in ("inpaint_random", "inpaint_box", "inpaint_stripes", "inpaint_text", "old_photo"):
        assert main(["restore", str(moved / "y.png"), "-o", str(tmp_path / "e.png"), "--mask",
                     str(tmp_path / "y.png.mask.png"), *(["--task", "old_photo"] if task == "old_photo" else []),
                     *run]) == 0                                                             # --mask
        paths += 1
    assert len(samplers) == paths
    expected = _expected(task, 2)
    for k, sampler in enumerate(samplers):
        if k == 4 and task != "old_photo":   # --mask alone is the inpaint_file task: the user's mask
            assert _settings(sampler) == _expected("inpaint_file", 2), task
        else:
            assert _settings(sampler) == expected, (task, k)


def test_a_config_may_pin_its_own_sampling(tmp_path, photo, samplers):
    y = tmp_path / "y.png"
    assert main(["degrade", str(photo), "-o", str(y), "--task", "sr4", "--quiet"]) == 0
    config = json.loads((tmp_path / "y.png.json").read_text())
    config["task_config"]["sampling"] = {"etw": 0.5, "nw": 0.25}
    (tmp_path / "y.png.json").write_text(json.dumps(config))
    assert main(["restore", str(y), "-o", str(tmp_path / "a.png"), "--steps", "2", "--sequential",
                 "--quiet"]) == 0
    assert (samplers[0].etw, samplers[0].nw, samplers[0].t_max) == (0.5, 0.25, None)
    assert sampling_defaults({"task": "sr4", "sampling": {"etw": 0.5}}) == {"etw": 0.5}
    assert sampling_defaults({"task": "sr4", "sampling": {}}) == {}            # the Sampler's own
    assert sampling_defaults({"task": "sr4"}) == TASKS["sr4"].sampling          # no entry: the task's
    assert sampling_defaults({"task": "no such task"}) == {} and sampling_defaults(None) == {}


def test_old_photo_with_its_own_mask_equals_the_sidecar_path(tmp_path):
    """The README's recipe for a real scan (--task old_photo --mask) restores what the degrade
    sidecar restores, to 2 8-bit levels on average (21.7 levels apart before the fix)."""
    from fixedpoint_ir.photos import holdout_crop

    clean = tmp_path / "clean.png"
    write_image(holdout_crop("astronaut", 64, scale=0.25)[None], clean)
    y = tmp_path / "scan.png"
    assert main(["degrade", str(clean), "-o", str(y), "--task", "old_photo", "--quiet"]) == 0
    assert main(["restore", str(y), "-o", str(tmp_path / "sidecar.png"), "--sequential", "--quiet"]) == 0
    moved = tmp_path / "scan"
    moved.mkdir()
    shutil.copy(y, moved / "my_scan.png")
    shutil.copy(tmp_path / "scan.png.mask.png", moved / "my_scratches.png")
    assert main(["restore", str(moved / "my_scan.png"), "-o", str(tmp_path / "mask.png"), "--task",
                 "old_photo", "--mask", str(moved / "my_scratches.png"), "--sequential", "--quiet"]) == 0
    a, _ = read_image(tmp_path / "sidecar.png")
    b, _ = read_image(tmp_path / "mask.png")
    levels = float((a - b).abs().mean()) * 255 / 2
    assert levels <= 2.0, levels


# --- item 3 and 4: progress and summaries --------------------------------------------------------
def _pty_run(argv: list[str], timeout: float = 300) -> str:
    """Run the CLI with stderr on a pseudo-terminal; return what the terminal showed."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 wide
    proc = subprocess.Popen([sys.executable, "-m", "fixedpoint_ir", *argv], stdout=subprocess.DEVNULL,
                            stderr=slave, stdin=subprocess.DEVNULL, cwd=REPO)
    os.close(slave)
    chunks = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            data = os.read(master, 4096)
        except OSError:   # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=max(1.0, deadline - time.time()))
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_the_sequential_chain_shows_a_bar_in_a_terminal_and_nothing_otherwise(tmp_path, photo, capsys):
    y = tmp_path / "y.png"
    assert main(["degrade", str(photo), "-o", str(y), "--task", "sr4", "--quiet"]) == 0
    shown = _pty_run(["restore", str(y), "-o", str(tmp_path / "t.png"), "--steps", "3", "--sequential"])
    assert "sequential steps" in shown and "3/3" in shown, shown
    quiet = _pty_run(["restore", str(y), "-o", str(tmp_path / "q.png"), "--steps", "3", "--sequential",
                      "--quiet"])
    assert "sequential steps" not in quiet and "steps" not in quiet, quiet
    capsys.readouterr()
    assert main(["restore", str(y), "-o", str(tmp_path / "p.png"), "--steps", "3", "--sequential"]) == 0
    captured = capsys.readouterr()   # not a terminal: no bar, the summary in steps
    assert "sequential steps" not in captured.err and "3/3" not in captured.err
    assert "sequential chain, 3 steps" in captured.out and "rounds" not in captured.out, captured.out


def test_summaries_name_the_status_and_the_quantity_compared_with_tol(tmp_path, photo, capsys):
    y = tmp_path / "y.png"
    assert main(["degrade", str(photo), "-o", str(y), "--task", "sr4", "--quiet"]) == 0
    capsys.readouterr()
    for solver in ["triangular", "picard", "anderson"]:
        assert main(["restore", str(y), "-o", str(tmp_path / f"{solver}.png"), "--steps", "6", "--solver",
                     solver]) == 0
        out = capsys.readouterr().out
        line = next(l for l in out.splitlines() if "->" in l)
        assert ("converged, " in line and "image within" in line and "tol 0.001" in line) \
            or ("stopped (not certified)" in line and "estimated distance" in line and "> tol 0.001" in line), line
        assert "residual" not in line, line


def test_unknown_solver_lists_auto(tmp_path, photo, capsys):
    assert main(["restore", str(photo), "-o", str(tmp_path / "o.png"), "--task", "sr4", "--solver",
                 "nope"]) == 2
    err = capsys.readouterr().err
    assert "auto" in err and "triangular" in err and "nope" in err and len(err.strip().splitlines()) == 1


# --- item 5: a command line that answers at once ------------------------------------------------
def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["restore", "--help"], ["restore"],
                                  ["restore", "x.png", "-o", "y.png", "--steps", "0"], ["nonsense"],
                                  ["restore", "no_such_input.png", "-o", "y.png"],
                                  ["restore", "README.md", "-o", "pyproject.toml"],
                                  ["restore", "README.md", "-o", "README.md.png", "--optimize-noise"]])
def test_help_version_and_argument_errors_never_import_torch(argv):
    out = _python("import sys\nfrom fixedpoint_ir.cli import main\n"
                  f"code = main({argv!r})\n"
                  "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', code, file=sys.stderr)")
    assert out.stderr.strip().endswith(("NO TORCH 0", "NO TORCH 2")), out.stderr


def test_the_package_imports_lazily_and_exports_the_solvers():
    out = _python("import sys, fixedpoint_ir\nassert 'torch' not in sys.modules\n"
                  "from fixedpoint_ir import Broyden, Anderson, Picard, TorchDEQ, Triangular, Sampler\n"
                  "import fixedpoint_ir as f\n"
                  "missing = [n for n in f.__all__ if getattr(f, n, None) is None]\n"
                  "assert not missing, missing\n"
                  "from fixedpoint_ir.backends import Broyden as B\nassert B is Broyden\nprint('ok')")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _interrupt(argv: list[str], after) -> subprocess.CompletedProcess:
    """Start the CLI, send SIGINT when ``after(stderr_so_far, seconds)`` says so."""
    # A test run started in the background by a shell inherits SIGINT ignored (POSIX); the command
    # line is tested as a terminal starts it, with the default disposition.
    proc = subprocess.Popen([sys.executable, "-m", "fixedpoint_ir", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    start = time.time()
    fd = proc.stderr.fileno()
    os.set_blocking(fd, False)
    seen = b""
    while proc.poll() is None and not after(seen.decode(errors="replace"), time.time() - start):
        try:
            seen += os.read(fd, 65536)
        except BlockingIOError:
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "the command ended before the interrupt"
    proc.send_signal(signal.SIGINT)
    os.set_blocking(fd, True)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), (seen + err).decode())


def test_ctrl_c_at_start_up_and_during_the_run_says_interrupted_with_status_130(tmp_path, photo):
    y = tmp_path / "y.png"
    assert main(["degrade", str(photo), "-o", str(y), "--task", "sr4", "--quiet"]) == 0
    argv = ["restore", str(y), "-o", str(tmp_path / "out.png"), "--sequential", "--steps", "1000"]
    for when in (lambda seen, t: t > 1.0,                              # importing torch
                 lambda seen, t: "using the degrade settings" in seen and t > 0.5):   # in the chain
        done = _interrupt(argv, when)
        assert done.returncode == 130, (done.returncode, done.stderr)
        assert "interrupted" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not (tmp_path / "out.png").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name], \
            list(tmp_path.iterdir())


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-fix-null-mean"], False),
                                            (["--fix-null-mean"], True)])
def test_fix_null_mean_flag_overrides_the_colorize_default(flag, expected, tmp_path, photo, samplers):
    y = tmp_path / "y.png"
    assert main(["degrade", str(photo), "-o", str(y), "--task", "colorize", "--quiet"]) == 0
    assert main(["restore", str(y), "-o", str(tmp_path / "a.png"), "--steps", "2", "--sequential",
                 "--quiet", *flag]) == 0
    assert samplers[0].fix_null_mean is expected
