"""The command line, run in-process on tiny images (and once as ``python -m fixedpoint_ir``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fixedpoint_ir.cli import main
from fixedpoint_ir.images import read_image, write_image
from fixedpoint_ir.operators.tasks import operator_from_config

from helpers import CHECKPOINT_FIXTURES

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

FAST = ["--steps", "3", "--quiet"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 32x32 crop of a hold-out photo, as a PNG."""
    from fixedpoint_ir.photos import holdout_crop

    path = tmp_path_factory.mktemp("photos") / "face.png"
    write_image(holdout_crop("astronaut", 32, scale=0.125)[None], path)
    return path


def _fails(capsys, argv, *fragments) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
    return err


def test_module_help_runs():
    out = subprocess.run([sys.executable, "-m", "fixedpoint_ir", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "restore" in out.stdout and "demo" in out.stdout
    assert main(["restore", "--help"]) == 0


def test_degrade_restore_sr4_chain(tmp_path, photo, capsys):
    y_path = tmp_path / "y.png"
    assert main(["degrade", str(photo), "-o", str(y_path), "--task", "sr4"]) == 0
    assert Image.open(y_path).size == (8, 8)
    side = json.loads((tmp_path / "y.png.json").read_text())
    assert side["task_config"]["task"] == "sr4" and side["image_shape"] == [3, 32, 32]
    out, fig = tmp_path / "r.png", tmp_path / "cmp.png"
    assert main(["restore", str(y_path), "-o", str(out), "--compare", str(fig),
                 "--ground-truth", str(photo), "--steps", "3"]) == 0
    captured = capsys.readouterr()
    assert "rounds" in captured.out and "NFEs" in captured.out and "PSNR" in captured.out
    assert "y.png.json" in captured.err  # the sidecar was found and said so
    assert fig.stat().st_size > 1000
    restored, _ = read_image(out)
    y, _ = read_image(y_path)
    op = operator_from_config(side["task_config"])
    assert restored.shape == (1, 3, 32, 32)
    # data consistency with the (quantised) observation, up to clamping and 8-bit rounding
    assert float((op.A(restored) - y).abs().mean()) < 0.01
    assert float((op.A(restored) - y).abs().max()) < 0.1


# inpaint_random (from the config) and inpaint_file (from --mask) have different task sampling
# defaults: the same chain settings, given explicitly, make the two runs the same problem.
SAME_CHAIN = ["--etw", "1", "--nw", "1", "--t-max", "250"]


def test_degrade_restore_inpaint_random_chain(tmp_path, photo, capsys):
    y_path = tmp_path / "masked.png"
    assert main(["degrade", str(photo), "-o", str(y_path), "--task", "inpaint_random",
                 "--param", "missing=0.8", "--seed", "7"]) == 0
    side = json.loads((tmp_path / "masked.png.json").read_text())
    assert side["task_config"]["params"] == {"missing": 0.8, "per_channel": False, "seed": 7}
    op = operator_from_config(side["task_config"])
    saved = np.asarray(Image.open(tmp_path / "masked.png.mask.png")) > 127
    assert np.array_equal(saved, op.mask.numpy()) and abs(saved.mean() - 0.2) < 0.01
    # restore with the config given explicitly, from a copy of the observation elsewhere
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    (elsewhere / "obs.png").write_bytes(y_path.read_bytes())
    (tmp_path / "masked.png.y.npy").unlink()   # the 8-bit picture alone, read as exact (σ_y 0)
    out = tmp_path / "r.png"
    assert main(["restore", str(elsewhere / "obs.png"), "-o", str(out), "--config",
                 str(tmp_path / "masked.png.json"), "--sigma-y", "0", *SAME_CHAIN, *FAST]) == 0
    restored, _ = read_image(out)
    y, _ = read_image(y_path)
    m = op.mask.bool()
    assert float((restored - y)[..., m].abs().max()) < 2.5 / 255  # observed pixels kept
    assert float((restored - y)[..., ~m].abs().mean()) > 0.02       # missing ones filled in
    # --mask rebuilds the same operator from the mask image alone
    out2 = tmp_path / "r2.png"
    assert main(["restore", str(elsewhere / "obs.png"), "-o", str(out2), "--mask",
                 str(tmp_path / "masked.png.mask.png"), "--sequential", "--sigma-y", "0", *SAME_CHAIN,
                 *FAST]) == 0
    # same operator, same seed: the sequential chain gives the parallel answer (8-bit files)
    assert float((read_image(out2)[0] - restored).abs().max()) <= 2.5 / 255


def test_colorize_chain_reads_grey_and_colour(tmp_path, photo, capsys):
    y_path = tmp_path / "grey.png"
    assert main(["degrade", str(photo), "-o", str(y_path), "--task", "colorize"]) == 0
    assert Image.open(y_path).mode == "L"
    out = tmp_path / "c.png"
    assert main(["restore", str(y_path), "-o", str(out), *FAST]) == 0
    restored, _ = read_image(out)
    y, _ = read_image(y_path)
    op = operator_from_config(json.loads((tmp_path / "grey.png.json").read_text())["task_config"])
    # consistent wherever clamping to the image range did not cut a channel
    inside = (restored.abs() < 0.99).all(dim=1, keepdim=True)
    assert inside.float().mean() > 0.5
    assert float((op.A(restored) - y[:, :1])[inside].abs().max()) < 3 / 255
    # a colour image given to colorize is turned into grey with the task's weights (a note)
    out2 = tmp_path / "c2.png"
    assert main(["restore", str(photo), "-o", str(out2), "--task", "colorize", "--steps", "2",
                 "--sequential"]) == 0
    assert "grey channel" in capsys.readouterr().err


def test_several_inputs_go_to_a_folder(tmp_path, photo, capsys):
    for name in ("a", "b"):
        assert main(["degrade", str(photo), "-o", str(tmp_path / f"{name}.png"), "--task", "sr2",
                     "--quiet"]) == 0
    outdir = tmp_path / "out"
    assert main(["restore", str(tmp_path / "*.png"), "-o", str(outdir), "--steps", "2",
                 "--sequential"]) == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["a.png", "b.png"]
    assert capsys.readouterr().out.count("sequential") == 2


def test_input_conversions_are_noted(tmp_path, photo, capsys):
    grey = tmp_path / "grey16.png"
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(grey)
    assert main(["degrade", str(grey), "-o", str(tmp_path / "y.png"), "--task", "sr2"]) == 0
    assert "16-bit" in capsys.readouterr().err
    rgba = tmp_path / "rgba.png"
    Image.open(photo).convert("RGBA").save(rgba)
    assert main(["degrade", str(rgba), "-o", str(tmp_path / "y2.png"), "--task", "sr2"]) == 0
    assert "alpha" in capsys.readouterr().err


def test_errors_are_one_line_with_status_2(tmp_path, photo, capsys):
    _fails(capsys, ["restore", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png"),
                    "--task", "sr4"], "not found", "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_text("this is not a PNG")
    _fails(capsys, ["degrade", str(bad), "-o", str(tmp_path / "o.png"), "--task", "sr4"],
           "cannot read", "bad.png")
    _fails(capsys, ["degrade", str(photo), "-o", str(photo), "--task", "sr4", "--overwrite"],
           "is the input")
    existing = tmp_path / "exists.png"
    existing.write_bytes(photo.read_bytes())
    _fails(capsys, ["degrade", str(photo), "-o", str(existing), "--task", "sr4"],
           "already exists", "--overwrite")
    assert main(["degrade", str(photo), "-o", str(existing), "--task", "sr4", "--overwrite",
                 "--quiet"]) == 0
    _fails(capsys, ["restore", str(existing), "-o", str(existing), "--overwrite"], "is the input")
    odd = tmp_path / "odd.png"
    Image.new("RGB", (30, 30)).save(odd)
    _fails(capsys, ["degrade", str(odd), "-o", str(tmp_path / "o.png"), "--task", "sr4"],
           "does not divide the image size 30x30")
    _fails(capsys, ["restore", str(odd), "-o", str(tmp_path / "o.png"), "--task", "nope"],
           "unknown task", "sr4", "inpaint_random")
    _fails(capsys, ["restore", str(odd), "-o", str(tmp_path / "o.png"), "--task", "sr2",
                    "--solver", "nope"], "unknown solver", "picard")
    _fails(capsys, ["restore", str(odd), "-o", str(tmp_path / "o.xyz"), "--task", "sr2"],
           "format")
    _fails(capsys, ["restore", str(odd), "-o", str(tmp_path / "o.png")], "--task")
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(ValueError, match="unknown solver"):
        main(["restore", str(odd), "-o", str(tmp_path / "o.png"), "--task", "sr2", "--solver",
              "nope", "--debug"])
    assert main(["restore"]) == 2  # usage error from argparse


def test_demo_tiny(tmp_path, capsys):
    folder = tmp_path / "demo"
    assert main(["demo", "-o", str(folder), "--size", "32", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["astronaut_sr4_compare.png", "astronaut_sr4_degraded.png",
                     "astronaut_sr4_ground_truth.png", "astronaut_sr4_restored.png"]
    assert "PSNR" in out and str(folder / "astronaut_sr4_compare.png") in out
    _fails(capsys, ["demo", "-o", str(folder), "--size", "32", "--steps", "2"], "already exists")


def test_fixed_size_checkpoint_is_tiled(tmp_path, capsys):
    """A 32x32 ADM checkpoint restores a 48x48 image tile by tile."""
    from fixedpoint_ir.photos import holdout_crop

    img = tmp_path / "img.png"
    write_image(holdout_crop("flower", 48, scale=0.25)[None], img)
    assert main(["degrade", str(img), "-o", str(tmp_path / "y.png"), "--task", "sr2", "--quiet"]) == 0
    out = tmp_path / "r.png"
    assert main(["restore", str(tmp_path / "y.png"), "-o", str(out), "--checkpoint",
                 str(CHECKPOINT_FIXTURES / "adm_small.safetensors"), "--steps", "1", "--sequential"]) == 0
    assert "2x2 overlapping tiles" in capsys.readouterr().err
    assert read_image(out)[0].shape == (1, 3, 48, 48)


def test_mask_file_chain_survives_moving_the_mask(tmp_path, photo, capsys):
    """degrade --mask saves a copy of the mask next to the observation; restore uses that copy."""
    mask = np.ones((32, 32), dtype=np.uint8) * 255
    mask[8:20, 4:28] = 0
    user_mask = tmp_path / "my_mask.png"
    Image.fromarray(mask).save(user_mask)
    y_path = tmp_path / "y.png"
    assert main(["degrade", str(photo), "-o", str(y_path), "--mask", str(user_mask), "--quiet"]) == 0
    user_mask.unlink()
    out = tmp_path / "r.png"
    assert main(["restore", str(y_path), "-o", str(out), "--steps", "2", "--sequential", "--quiet"]) == 0
    restored, y = read_image(out)[0], read_image(y_path)[0]
    keep = torch.from_numpy(mask > 127)
    assert float((restored - y)[..., keep].abs().max()) < 2.5 / 255


def test_restore_with_noise_optimisation_toward_a_reference(tmp_path, photo, capsys):
    y_path = tmp_path / "y.png"
    assert main(["degrade", str(photo), "-o", str(y_path), "--task", "sr4", "--quiet"]) == 0
    out = tmp_path / "r.png"
    assert main(["restore", str(y_path), "-o", str(out), "--steps", "2", "--optimize-noise",
                 "--reference", str(photo), "--opt-steps", "1", "--gradient", "one_step"]) == 0
    assert "noise optimisation" in capsys.readouterr().out
    assert read_image(out)[0].shape == (1, 3, 32, 32)
    _fails(capsys, ["restore", str(y_path), "-o", str(tmp_path / "r2.png"), "--optimize-noise"],
           "--optimize-noise needs --reference")


def test_surrogate_option(tmp_path, photo, capsys):
    """--surrogate white / a PowerLawGaussian JSON changes only the rounds; a missing or broken file
    is a one-line error."""
    from fixedpoint_ir.priors.default import DEFAULT_SURROGATE

    y_path = tmp_path / "y.png"
    assert main(["degrade", str(photo), "-o", str(y_path), "--task", "sr4", "--quiet"]) == 0
    for i, choice in enumerate(["white", str(DEFAULT_SURROGATE)]):
        out = tmp_path / f"r{i}.png"
        assert main(["restore", str(y_path), "-o", str(out), "--steps", "4", "--surrogate", choice,
                     "--quiet"]) == 0
        assert out.is_file()
    first, second = (np.asarray(Image.open(tmp_path / f"r{i}.png"), dtype=float) for i in range(2))
    assert np.abs(first - second).max() <= 1.0   # the same fixed point, up to tol and 8-bit rounding
    capsys.readouterr()   # the runs above warn that 32 px is below the prior's training size
    _fails(capsys, ["restore", str(y_path), "-o", str(tmp_path / "x.png"), "--surrogate",
                    str(tmp_path / "none.json"), "--quiet"], "--surrogate", "none.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    _fails(capsys, ["restore", str(y_path), "-o", str(tmp_path / "x.png"), "--surrogate", str(broken),
                    "--quiet"], "power_law_gaussian")


# --- issue 14: the first hour of a new user -------------------------------------------------------------
def _no_prior(monkeypatch):
    """Make loading the prior fail loudly: the checks below must happen before it (and any network)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the prior was loaded before the output checks")
    monkeypatch.setattr("fixedpoint_ir.cli.restore._load_prior", refuse)


def test_sequential_nan_prior_exits_2_and_writes_nothing(tmp_path, photo, capsys, monkeypatch):
    from fixedpoint_ir import GaussianMixturePrior

    class NaNPrior(GaussianMixturePrior):
        def predict_eps(self, x, t):
            return super().predict_eps(x, t) * float("nan")

    monkeypatch.setattr("fixedpoint_ir.cli.restore._load_prior", lambda *a, **k: NaNPrior())
    out = tmp_path / "out.png"
    for extra in (["--sequential"], []):
        err = _fails(capsys, ["restore", str(photo), "-o", str(out), "--task", "sr2", "--steps", "3",
                              "--quiet", *extra], "NaN")
        assert "internal error" not in err
        assert not out.exists()


def test_output_problems_are_found_before_the_work(tmp_path, photo, capsys, monkeypatch):
    import errno

    _no_prior(monkeypatch)
    _fails(capsys, ["restore", str(photo), "-o", str(tmp_path / "missing" / "r.png"), "--task", "sr2"],
           "does not exist", "mkdir -p")

    def read_only(folder):
        raise OSError(errno.EROFS, "Read-only file system", str(folder))
    monkeypatch.setattr("fixedpoint_ir.images.check_writable", read_only)
    _fails(capsys, ["restore", str(photo), "-o", str(tmp_path / "r.png"), "--task", "sr2"], "Read-only file system")
    second = tmp_path / "b.png"
    second.write_bytes(photo.read_bytes())
    _fails(capsys, ["restore", str(photo), str(second), "-o", str(tmp_path / "onefile.png"), "--task", "sr2"],
           "2 inputs", "folder")
    assert not (tmp_path / "onefile.png").exists()


def test_write_error_of_the_file_system_is_a_one_line_error(tmp_path, photo, capsys, monkeypatch):
    import errno

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "r.png"))
    monkeypatch.setattr("fixedpoint_ir.images.write_image", refuse)
    err = _fails(capsys, ["restore", str(photo), "-o", str(tmp_path / "r.png"), "--task", "sr2",
                          "--steps", "2", "--sequential", "--quiet"], "Read-only file system")
    assert "internal error" not in err


def test_decompression_bomb_is_a_user_error(tmp_path, photo, capsys, monkeypatch):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)   # the 32x32 photo is > 2x this: refused
    _no_prior(monkeypatch)
    err = _fails(capsys, ["restore", str(photo), "-o", str(tmp_path / "r.png"), "--task", "sr2"],
                 "decompression bomb")
    assert "internal error" not in err


def test_seed_out_of_range_names_the_option(tmp_path, photo, capsys):
    assert main(["restore", str(photo), "-o", str(tmp_path / "r.png"), "--task", "sr2",
                 "--seed", "99999999999999999999"]) == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "Overflow" not in err


def test_help_explains_every_argument(capsys):
    assert main(["degrade", "--help"]) == 0
    out = capsys.readouterr().out
    assert "clean image file" in out
    assert main(["restore", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "predicted noise" in out and "fresh random noise" in out


def test_small_colorization_and_synthetic_scratches_are_announced(tmp_path, photo, capsys):
    """32 px is below the shipped prior's 64 px training crops: a warning, even with --quiet; old_photo
    without --mask says its mask is synthetic; with --mask the scan's own mask is used."""
    grey = tmp_path / "grey.png"
    write_image(read_image(photo)[0].mean(1, keepdim=True), grey)
    assert main(["restore", str(grey), "-o", str(tmp_path / "c.png"), "--task", "colorize", "--steps", "3",
                 "--sequential", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "smaller than the 64x64 crops" in err and "wrong colours" in err
    assert main(["restore", str(grey), "-o", str(tmp_path / "o.png"), "--task", "old_photo", "--steps", "3",
                 "--sequential", "--quiet"]) == 0
    assert "synthetic scratch mask" in capsys.readouterr().err
    mask = tmp_path / "scratches.png"
    m = np.full((32, 32), 255, dtype=np.uint8)
    m[10, :] = 0
    Image.fromarray(m).save(mask)
    assert main(["restore", str(grey), "-o", str(tmp_path / "m.png"), "--task", "old_photo", "--mask", str(mask),
                 "--steps", "3", "--sequential", "--quiet"]) == 0
    assert "synthetic" not in capsys.readouterr().err


def test_clipping_warning_only_for_images_far_outside_the_range():
    from fixedpoint_ir.cli.running import _clipping_warning

    assert _clipping_warning(torch.zeros(1, 3, 8, 8)) is None
    assert _clipping_warning(torch.full((1, 3, 8, 8), 1.02)) is None
    assert "clipped" in _clipping_warning(torch.full((1, 3, 8, 8), 2.3))
