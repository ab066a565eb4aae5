"""SmallUNet, its training script, the default-prior loader and the photo sets."""
from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from fixedpoint_ir import photos, train
from fixedpoint_ir.priors import default as default_mod
from fixedpoint_ir.priors.base import ModulePrior
from fixedpoint_ir.priors.small_unet import SmallUNet, load_small_unet, save_small_unet


def _randomised(model: SmallUNet, seed: int = 0) -> SmallUNet:
    """The zero-initialised output layers make a fresh net return 0: perturb every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("shape", [(1, 3, 37, 45), (2, 3, 16, 16), (1, 3, 5, 3), (1, 3, 1, 1)])
def test_small_unet_any_size(shape):
    torch.manual_seed(0)
    model = _randomised(SmallUNet(base_channels=16, channel_mults=(1, 2, 2), groups=8))
    x = torch.randn(*shape)
    t = torch.randint(0, 1000, (shape[0],))
    with torch.no_grad():
        out = model(x, t)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_small_unet_default_size_and_config():
    model = SmallUNet()
    assert 1_500_000 < model.num_parameters() < 4_000_000
    json.dumps(model.config)                                  # JSON-able
    assert SmallUNet(**model.config).num_parameters() == model.num_parameters()


def test_padding_is_local_and_batch_independent():
    """A cropped-back padded image equals the same image processed alone (no batch mixing)."""
    model = _randomised(SmallUNet(base_channels=16, channel_mults=(1, 2, 2), groups=8))
    x = torch.randn(3, 3, 21, 19)
    t = torch.tensor([10, 500, 990])
    with torch.no_grad():
        full = model(x, t)
        single = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    model = _randomised(SmallUNet(base_channels=16, channel_mults=(1, 2), groups=4))
    path = tmp_path / "w.safetensors"
    save_small_unet(model, path, {"steps": 7, "note": "x"})
    loaded, meta = load_small_unet(path)
    assert meta["steps"] == "7" and meta["note"] == "x"
    assert loaded.config == model.config
    x, t = torch.randn(1, 3, 12, 12), torch.tensor([3])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t))


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    rc = train.main(["--out", str(out), "--steps", "5", "--batch-size", "2", "--crop", "16",
                     "--log-every", "2", "--seed", "3", "--no-progress", "--base-channels", "16"])
    assert rc == 0
    return out


def test_training_writes_files(trained_dir):
    for name in (train.WEIGHTS_NAME, train.LOG_NAME, train.CURVE_NAME, train.HASH_NAME):
        assert (trained_dir / name).is_file(), name
    assert not [p for p in trained_dir.iterdir() if p.name.endswith(".tmp")]
    log = json.loads((trained_dir / train.LOG_NAME).read_text())
    assert log["steps"] == 5 and log["seed"] == 3 and log["device"] == "cpu"
    assert log["torch"] == torch.__version__ and log["wall_clock_s"] > 0
    assert log["command"][-1] == "16" and "--steps" in log["command"]
    assert [c["step"] for c in log["loss_curve"]] == [2, 4, 5]
    assert not set(log["train_photos"]) & set(photos.HOLDOUT)
    assert (trained_dir / train.CURVE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trained_weights_load_strictly(trained_dir):
    model, meta = load_small_unet(trained_dir / train.WEIGHTS_NAME)
    assert isinstance(model, SmallUNet) and model.config["base_channels"] == 16
    assert meta["steps"] == "5" and meta["seed"] == "3"
    assert json.loads(meta["schedule"]) == train.SCHEDULE
    # strictness: a missing tensor is an error
    state = model.state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(RuntimeError):
        SmallUNet(**model.config).load_state_dict(state, strict=True)


def test_default_prior_loads_and_checks_hash(trained_dir, tmp_path, monkeypatch):
    weights = tmp_path / "default_prior.safetensors"
    hash_file = tmp_path / "default_prior.sha256"
    shutil.copy(trained_dir / train.WEIGHTS_NAME, weights)
    shutil.copy(trained_dir / train.HASH_NAME, hash_file)
    monkeypatch.setattr(default_mod, "DEFAULT_WEIGHTS", weights)
    monkeypatch.setattr(default_mod, "DEFAULT_WEIGHTS_SHA256", hash_file)

    prior = default_mod.default_prior(max_batch=2)
    assert isinstance(prior, ModulePrior) and not prior.training
    assert not any(p.requires_grad for p in prior.parameters())
    assert prior.num_train_steps == 1000
    x = torch.randn(3, 3, 10, 14)
    assert prior.eps(x, torch.tensor([0, 500, 999])).shape == x.shape

    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF                                           # corrupt one byte
    weights.write_bytes(bytes(data))
    expected = hash_file.read_text().split()[0]
    with pytest.raises(default_mod.WeightsHashError) as err:
        default_mod.default_prior()
    assert expected in str(err.value) and train.sha256_of(weights) in str(err.value)

    weights.unlink()
    with pytest.raises(default_mod.WeightsMissingError, match="fixedpoint_ir.train"):
        default_mod.default_prior()


def test_photo_sets_disjoint_and_named():
    assert set(photos.TRAIN).isdisjoint(photos.HOLDOUT)
    assert set(photos.EXTRA).isdisjoint(photos.HOLDOUT)
    assert not any("lena" in n for n in photos.TRAIN + photos.HOLDOUT + photos.EXTRA)
    for name in photos.HOLDOUT:
        with pytest.raises(AssertionError):
            photos.assert_not_holdout(name)


def test_photos_load_offline_and_differ():
    train_imgs = photos.train_photos()
    assert list(train_imgs) == list(photos.TRAIN)
    hold = photos.holdout_photos()
    for img in list(train_imgs.values()) + list(hold.values()):
        assert img.dtype == torch.float32 and img.dim() == 3 and img.shape[0] == 3
        assert img.min() >= -1 and img.max() <= 1
    for h in hold.values():                                    # no hold-out pixels in training data
        assert all(h.shape != t.shape or not torch.equal(h, t) for t in train_imgs.values())


def test_holdout_crop_deterministic():
    a = photos.holdout_crop("astronaut", 32)
    b = photos.holdout_crop("astronaut", 32)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    c = photos.holdout_crop("flower", (24, 40), scale=0.25)
    assert c.shape == (3, 24, 40) and c.min() >= -1 and c.max() <= 1
    corner = photos.holdout_crop("grace_hopper", 16, center=(0.0, 1.0))
    full = photos.load_photo("grace_hopper")
    assert torch.equal(corner, full[:, :16, -16:])
    with pytest.raises(KeyError):
        photos.holdout_crop("coffee", 16)
    with pytest.raises(ValueError):
        photos.holdout_crop("astronaut", 600)


@pytest.mark.parametrize("levels", [16, 0])
def test_random_crops_shapes_and_seed(levels):
    imgs = [torch.rand(3, 40, 50) * 2 - 1, torch.rand(3, 30, 30) * 2 - 1]
    a = train.random_crops(imgs, 6, 16, torch.Generator().manual_seed(1), scale_levels=levels)
    b = train.random_crops(imgs, 6, 16, torch.Generator().manual_seed(1), scale_levels=levels)
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


def test_random_crops_are_symmetries_of_the_window():
    """At scale 1 on a crop-sized image every sample is one of the 8 flips/rotations of it."""
    img = torch.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8)
    out = train.random_crops([img], 64, 8, torch.Generator().manual_seed(0), min_scale=1.0, max_scale=1.0)
    d8 = [torch.rot90(v, k, dims=(-2, -1)) for v in (img, img.flip(-1)) for k in range(4)]
    hits = [next(i for i, d in enumerate(d8) if torch.equal(o, d)) for o in out]
    assert len(set(hits)) == 8


def test_train_args_validation(tmp_path):
    with pytest.raises(SystemExit):
        train.main(["--out", str(tmp_path)])                   # neither --steps nor --minutes


def test_a_photo_whose_package_is_missing_names_the_extra(monkeypatch):
    """flower.jpg and china.jpg ship with scikit-learn (in the images extra): without it the error
    says what to install, not a bare import failure deep in the loader."""
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ModuleNotFoundError, match=r"flower\.jpg.*fixedpoint-ir\[images\]"):
        photos.load_photo("flower")
