"""Pretrained priors: ADM / DDPM architectures against the checkpoint fixtures, and load_prior."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fixedpoint_ir.priors.adm import ADM_256_COND_CONFIG, ADM_256_UNCOND_CONFIG, ADMUNet, adm_config_from_flags
from fixedpoint_ir.priors.base import ModulePrior
from fixedpoint_ir.priors.checkpoints import (
    CheckpointError,
    CheckpointPrior,
    betas_from_scheduler_config,
    detect_format,
    infer_adm_config,
    infer_ddpm_config,
    load_prior,
    read_state_dict,
)
from fixedpoint_ir.priors.ddpm import DDPM_CELEBAHQ_256_CONFIG, DDPMModel
from fixedpoint_ir.schedule import alphas_cumprod_from_betas, linear_betas

from helpers import CHECKPOINT_FIXTURES as FIXTURES


LAYOUTS = ["adm_256_uncond", "adm_256_cond", "adm_small", "ddpm_celebahq_256", "ddpm_small"]


def _layout(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}_layout.json").read_text())


def _build(layout: dict):
    if layout["architecture"] == "guided_diffusion.unet.UNetModel":
        return ADMUNet(**layout["config"])
    assert layout["architecture"] == "models.diffusion.Model"
    return DDPMModel(**layout["config"])


def _io(kind: str) -> dict:
    return load_file(FIXTURES / f"{kind}_small_io.safetensors")


def _sd(kind: str) -> dict:
    return load_file(FIXTURES / f"{kind}_small.safetensors")


def _meta(kind: str) -> dict:
    from safetensors import safe_open
    with safe_open(FIXTURES / f"{kind}_small.safetensors", "pt") as f:
        return dict(f.metadata())


# ------------------------------------------------------------------------------------------------
# Architectures against the fixtures
# ------------------------------------------------------------------------------------------------
def test_fixtures_match_their_published_hashes():
    """The in-repository copy is byte for byte the published fixture set (its README's SHA-256 list)."""
    import hashlib
    import re

    listed = re.findall(r"^([0-9a-f]{64})  (\S+)$", (FIXTURES / "README.md").read_text(), re.M)
    assert len(listed) == 9
    for digest, name in listed:
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_reproduced_exactly(name):
    layout = _layout(name)
    with torch.device("meta"):
        model = _build(layout)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == layout["state_dict"]
    assert list(got) == list(layout["state_dict"])          # registration order too
    assert len(got) == layout["num_tensors"]
    assert sum(v.numel() for v in model.state_dict().values()) == layout["num_elements"]
    assert not list(model.buffers())


@pytest.mark.parametrize("kind", ["adm", "ddpm"])
@pytest.mark.parametrize("float_t", [False, True])
def test_small_fixture_outputs(kind, float_t):
    model = _build(_layout(f"{kind}_small")).eval()
    model.load_state_dict(_sd(kind), strict=True)
    io = _io(kind)
    t = io["t"].float() if float_t else io["t"]
    with torch.no_grad():
        out = model(io["x"], t)
    assert out.dtype == torch.float32 and out.shape == io["out"].shape
    torch.testing.assert_close(out, io["out"], atol=1e-5, rtol=0)


def test_adm_config_from_flags_matches_public_configs():
    flags = dict(image_size=256, num_channels=256, num_res_blocks=2, channel_mult="", learn_sigma=True,
                 attention_resolutions="32,16,8", num_heads=4, num_head_channels=64,
                 use_scale_shift_norm=True, resblock_updown=True)
    assert adm_config_from_flags(**flags) == ADM_256_UNCOND_CONFIG
    assert adm_config_from_flags(**flags, class_cond=True) == ADM_256_COND_CONFIG


def _meta_state(config: dict) -> dict:
    with torch.device("meta"):
        return ADMUNet(**config).state_dict()


@pytest.mark.parametrize("config", [
    ADM_256_UNCOND_CONFIG,
    ADM_256_COND_CONFIG,
    adm_config_from_flags(64, num_channels=192, num_res_blocks=3, learn_sigma=True, class_cond=True,
                          attention_resolutions="32,16,8", num_head_channels=64, use_scale_shift_norm=True,
                          resblock_updown=True),
    adm_config_from_flags(512, num_channels=256, learn_sigma=True, class_cond=True, attention_resolutions="32,16,8",
                          num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True),
    adm_config_from_flags(256, num_channels=128, num_res_blocks=1, learn_sigma=True, attention_resolutions="16",
                          num_heads=4, num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True),
    adm_config_from_flags(32, num_channels=64, channel_mult="1,2,2,2", attention_resolutions="16,8", num_heads=4),
    {**adm_config_from_flags(32, num_channels=64, channel_mult="1,2,2", attention_resolutions="16"),
     "conv_resample": False},
], ids=["256-uncond", "256-cond", "64-cond", "512-cond", "256-nrb1", "conv-resample", "avgpool"])
def test_adm_config_inferred_from_shapes(config):
    sd = _meta_state(config)
    assert detect_format(sd) == "adm"
    inferred = infer_adm_config(sd)
    assert {k: tuple(v.shape) for k, v in _meta_state(inferred).items()} == \
           {k: tuple(v.shape) for k, v in sd.items()}
    assert inferred["num_classes"] == config["num_classes"]
    if config in (ADM_256_UNCOND_CONFIG, ADM_256_COND_CONFIG):
        assert inferred == config
    if tuple(config["channel_mult"]) != (1, 2, 2):   # a known channel_mult tells the resolution
        assert inferred["image_size"] == config["image_size"]
    else:                                              # otherwise the 256 default
        assert inferred["image_size"] == 256


@pytest.mark.parametrize("ch_mult,size", [([1, 2, 2, 2], 32), ([1, 2, 2, 2, 4], 64), ([1, 1, 2, 2, 4, 4], 256)])
def test_ddpm_config_inferred_from_shapes(ch_mult, size):
    cfg = {"model": {"ch": 128, "out_ch": 3, "ch_mult": ch_mult, "num_res_blocks": 2, "attn_resolutions": [16],
                     "in_channels": 3, "resamp_with_conv": True, "dropout": 0.1}, "data": {"image_size": size}}
    with torch.device("meta"):
        sd = DDPMModel(cfg).state_dict()
    assert detect_format(sd) == "ddpm"
    inferred = infer_ddpm_config(sd)
    assert inferred["data"]["image_size"] == size and inferred["model"]["attn_resolutions"] == [16]
    assert inferred["model"]["ch_mult"] == ch_mult and inferred["model"]["num_res_blocks"] == 2
    if size == 256:
        assert inferred == DDPM_CELEBAHQ_256_CONFIG


def test_ddpm_model_rejects_other_sizes():
    cfg = {"model": {"ch": 32, "out_ch": 3, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                     "in_channels": 3}, "data": {"image_size": 16}}
    model = DDPMModel(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16), torch.tensor([3])).shape == (1, 3, 16, 16)
        with pytest.raises(ValueError, match="H == W == image_size = 16"):
            model(torch.randn(1, 3, 32, 32), torch.tensor([3]))
        with pytest.raises(ValueError, match="H == W"):
            model(torch.randn(1, 3, 16, 8), torch.tensor([3]))


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random nonzero parameters everywhere (ADM zero-initialises its output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    return model


def _small_cond_config(num_classes: int = 10) -> dict:
    return {**json.loads(_meta("adm")["config"]), "num_classes": num_classes}


def test_adm_class_labels():
    model = _randomize(ADMUNet(**_small_cond_config()), 0).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 700])
    with torch.no_grad():
        a = model(x, t, torch.tensor([1, 1]))
        b = model(x, t, torch.tensor([2, 2]))
        assert not torch.allclose(a, b)
        with pytest.raises(ValueError, match="class-conditional"):
            model(x, t)
        with pytest.raises(ValueError, match=r"\[0, 10\)"):
            model(x, t, torch.tensor([0, 10]))
        with pytest.raises(ValueError, match="integers"):
            model(x, t, torch.tensor([0.0, 1.0]))
        with pytest.raises(ValueError, match="unconditional"):
            ADMUNet(**_layout("adm_small")["config"]).eval()(x, t, torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------------
# load_prior on the fixtures and on the file formats in the wild
# ------------------------------------------------------------------------------------------------
def _check_prior(prior, kind: str, image_size=(32, 32)):
    assert isinstance(prior, CheckpointPrior) and isinstance(prior, ModulePrior)
    assert not prior.training and not prior.network.training
    assert all(not p.requires_grad for p in prior.parameters())
    assert prior.image_size == image_size
    torch.testing.assert_close(prior.alphas_cumprod, alphas_cumprod_from_betas(linear_betas()), rtol=0, atol=0)
    io = _io(kind)
    with torch.no_grad():
        eps = prior.eps(io["x"], io["t"])
    assert eps.shape == (2, 3, 32, 32) and eps.dtype == torch.float32
    torch.testing.assert_close(eps, io["out"][:, :3], atol=1e-5, rtol=0)
    return eps


@pytest.mark.parametrize("kind", ["adm", "ddpm"])
def test_load_prior_fixture(kind):
    prior = load_prior(FIXTURES / f"{kind}_small.safetensors")
    assert prior.format == kind
    eps = _check_prior(prior, kind)
    assert not eps.is_inference()
    eps.mul_(2)                                   # a normal tensor: in-place updates are allowed
    io = _io(kind)
    prior.max_batch = 1                           # chunked: the same numbers
    with torch.no_grad():
        torch.testing.assert_close(prior.eps(io["x"], io["t"].double()), io["out"][:, :3], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["adm", "ddpm"])
def test_gradient_flows_to_the_input(kind):
    prior = load_prior(FIXTURES / f"{kind}_small.safetensors")
    io = _io(kind)
    x = io["x"][:1].clone().requires_grad_()
    prior.eps(x, io["t"][:1]).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())


def test_module_prefixed_pt_with_inferred_config(tmp_path):
    path = tmp_path / "adm.pt"
    torch.save({"module." + k: v for k, v in _sd("adm").items()}, path)
    assert set(read_state_dict(path)) == set(_sd("adm"))
    with pytest.warns(UserWarning, match="num_head_channels=-1.*image_size=256"):
        load_prior(path)                           # guessed settings are announced
    # the head width and the resolution are not in the weights: the small model uses 16-channel heads
    prior = load_prior(path, num_head_channels=16, image_size=32)
    assert prior.config["channel_mult"] == (1, 1, 1) and prior.config["attention_resolutions"] == (2, 4)
    _check_prior(prior, "adm")
    with pytest.raises(TypeError, match="unknown ADM config override"):
        load_prior(path, num_head_channel=16)


def test_ddpm_ckpt_inferred_config(tmp_path):
    path = tmp_path / "celeba_like.ckpt"
    torch.save(_sd("ddpm"), path)                 # a plain state dict, like celeba_hq.ckpt
    prior = load_prior(path)                      # attention at 16x16 -> image_size 32
    assert prior.config["data"]["image_size"] == 32
    _check_prior(prior, "ddpm")


@pytest.mark.parametrize("with_ema", [True, False])
def test_ddim_runner_list(tmp_path, with_ema):
    true = _sd("ddpm")
    other = {k: torch.randn_like(v) for k, v in true.items()}
    model_state = {"module." + k: v for k, v in (other if with_ema else true).items()}
    optim = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
             "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": [0]}]}
    states = [model_state, optim, 12, 34000] + ([true] if with_ema else [])
    path = tmp_path / "ckpt.pth"
    torch.save(states, path)
    prior = load_prior(path)
    assert ("ema_state" in prior.description) == with_ema
    _check_prior(prior, "ddpm")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    prior = load_prior(FIXTURES / "adm_small.safetensors", dtype=dtype)
    assert {p.dtype for p in prior.parameters()} == {dtype}
    io = _io("adm")
    with torch.no_grad():
        eps = prior.eps(io["x"][1:], io["t"][1:])           # t = 500
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()
    tol = 2e-2 if dtype == torch.float16 else 1.5e-1
    torch.testing.assert_close(eps, io["out"][1:, :3], atol=tol, rtol=0)
    err = (eps - io["out"][1:, :3]).abs().mean()
    assert err < (3e-3 if dtype == torch.float16 else 2e-2)
    assert load_prior(FIXTURES / "ddpm_small.safetensors", dtype="bf16").eps(io["x"][:1], io["t"][:1]).dtype \
        == torch.float32


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch._dynamo's own imports
def test_compile_flag_wraps_the_network():
    plain = load_prior(FIXTURES / "adm_small.safetensors")
    prior = load_prior(FIXTURES / "adm_small.safetensors", compile=True)
    assert type(prior.module._fn).__name__ == "OptimizedModule"
    assert prior.module._fn._orig_mod is prior.network
    assert set(prior.state_dict()) == set(plain.state_dict())     # no "_orig_mod." keys


def test_class_conditional_prior(tmp_path):
    config = _small_cond_config(10)
    model = _randomize(ADMUNet(**config), 1).eval()
    path = tmp_path / "cond.safetensors"
    save_file(model.state_dict(), path, metadata={"architecture": "guided_diffusion.unet.UNetModel",
                                                 "config": json.dumps(config)})
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 900])
    prior = load_prior(path, class_label=7)
    assert prior.num_classes == 10 and prior.class_label == 7
    with torch.no_grad():
        ref = model(x, t, torch.tensor([7, 7]))[:, :3]
        assert ref.abs().mean() > 0.1
        torch.testing.assert_close(prior.eps(x, t), ref, atol=1e-5, rtol=0)
        assert not torch.allclose(ref, model(x, t, torch.tensor([6, 6]))[:, :3])
    with pytest.raises(CheckpointError, match="class-conditional"):
        load_prior(path)
    for bad in (10, -1):
        with pytest.raises(CheckpointError, match=r"out of range.*\[0, 10\)") as info:
            load_prior(path, class_label=bad)
        assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="out of range"):
        prior.class_label = 12
    with pytest.raises(CheckpointError, match="unconditional"):
        load_prior(FIXTURES / "adm_small.safetensors", class_label=0)
    # the same weights without metadata: num_classes comes from label_emb
    pt = tmp_path / "cond.pt"
    torch.save(model.state_dict(), pt)
    assert load_prior(pt, class_label=2, image_size=32, num_head_channels=16).num_classes == 10


# ------------------------------------------------------------------------------------------------
# diffusers folders
# ------------------------------------------------------------------------------------------------
def _tiny_unet():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8).eval()


@pytest.mark.parametrize("layout", ["unet_subfolder", "flat"])
def test_diffusers_folder(tmp_path, layout):
    diffusers = pytest.importorskip("diffusers")
    unet = _tiny_unet()
    scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear" if layout == "flat" else "squaredcos_cap_v2",
                                        beta_start=0.0001, beta_end=0.02, clip_sample=False)
    folder = tmp_path / "model"
    if layout == "unet_subfolder":
        unet.save_pretrained(folder / "unet")
        scheduler.save_pretrained(folder / "scheduler")
    else:
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder)           # scheduler_config.json next to config.json
    prior = load_prior(folder)
    assert prior.format == "diffusers" and prior.image_size is None
    assert all(not p.requires_grad for p in prior.parameters()) and not prior.training
    torch.testing.assert_close(prior.alphas_cumprod, scheduler.alphas_cumprod.double(), atol=1e-6, rtol=0)

    # a short sequential DDIM run (η = 0): at every step ε from the prior equals the diffusers model's
    # .sample, and the update with the prior's ᾱ equals diffusers' DDIMScheduler step
    ddim = diffusers.DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(4)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ac = prior.alphas_cumprod
    steps = ddim.timesteps.tolist()
    for i, t in enumerate(steps):
        tt = torch.full((2,), t, dtype=torch.long)
        with torch.no_grad():
            eps = prior.eps(x, tt)
            ref = unet(x, tt).sample
        assert eps.shape == x.shape and eps.dtype == torch.float32
        torch.testing.assert_close(eps, ref, atol=1e-5, rtol=0)
        a = ac[t].float()
        b = ac[steps[i + 1]].float() if i + 1 < len(steps) else torch.tensor(1.0)
        x_next = b.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - b).sqrt() * eps
        torch.testing.assert_close(x_next, ddim.step(eps, t, x, eta=0.0).prev_sample, atol=1e-5, rtol=1e-5)
        x = x_next
    assert torch.isfinite(x).all()


def test_diffusers_v_prediction_and_defaults(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    unet = _tiny_unet()
    unet.save_pretrained(tmp_path / "m")
    prior = load_prior(tmp_path / "m")               # no scheduler config: DDPMScheduler defaults
    torch.testing.assert_close(prior.alphas_cumprod, alphas_cumprod_from_betas(linear_betas()), atol=1e-12, rtol=0)
    diffusers.DDPMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path / "m")
    prior = load_prior(tmp_path / "m", dtype=torch.bfloat16)
    assert {p.dtype for p in prior.parameters()} == {torch.bfloat16}
    prior = load_prior(tmp_path / "m")
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([600])
    with torch.no_grad():
        v = unet(x, t).sample
        a = prior.alphas_cumprod[600].float()
        torch.testing.assert_close(prior.eps(x, t), a.sqrt() * v + (1 - a).sqrt() * x, atol=1e-5, rtol=0)


def test_scheduler_betas():
    cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    b = betas_from_scheduler_config(cfg)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert abs(b[0] - 0.00085) < 1e-12 and abs(b[-1] - 0.012) < 1e-12
    cos = betas_from_scheduler_config({"beta_schedule": "squaredcos_cap_v2"})
    assert cos.max() <= 0.999 and (cos[1:] >= cos[:-1] - 1e-12).all()
    with pytest.raises(ValueError, match="unsupported beta_schedule"):
        betas_from_scheduler_config({"beta_schedule": "sigmoid"})


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
_EXECUTED = []


def _mark_executed():   # pragma: no cover - must never run
    _EXECUTED.append(True)
    return 0


class _Evil:
    def __reduce__(self):
        return (_mark_executed, ())


@pytest.mark.parametrize("name,head", [("random.pt", b"\x13\x37"), ("random.safetensors", b"\x10\x00"),
                                       ("pickle-like.ckpt", b"\x80\x02")])
def test_not_a_checkpoint(tmp_path, name, head):
    path = tmp_path / name
    path.write_bytes(head + torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0),
                                          dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="not a checkpoint file|unreadable or corrupt") as info:
        load_prior(path)
    assert str(path) in str(info.value)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_prior(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_prior(tmp_path / "missing.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_prior(tmp_path / "folder")


@pytest.mark.parametrize("zip_format", [True, False])
def test_code_in_file_is_never_executed(tmp_path, zip_format):
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Evil()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match="holds Python code.*_mark_executed.*was not run") as info:
        load_prior(path)
    assert not _EXECUTED
    message = str(info.value)
    assert "weights_only" not in message and "corrupt" not in message   # no advice to run the code
    assert "convert_to_safetensors" in message and "trusted=True" in message


def test_a_trusted_full_pickle_converts_to_safetensors(tmp_path):
    import argparse

    from fixedpoint_ir.priors.checkpoints import convert_to_safetensors

    source = tmp_path / "full.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1)}, source)
    with pytest.raises(CheckpointError, match="holds Python code"):
        read_state_dict(source)
    with pytest.raises(ValueError, match="trusted=True"):
        convert_to_safetensors(source, tmp_path / "full.safetensors")
    out = convert_to_safetensors(source, tmp_path / "full.safetensors", trusted=True)
    assert torch.equal(read_state_dict(out)["w"], torch.ones(2))


def test_unreachable_hub_fails_in_seconds_and_says_offline(monkeypatch):
    import socket
    import time

    with socket.socket() as s:   # a port nothing listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="cannot be reached.*offline.*local folder") as info:
        load_prior("google/ddpm-cifar10-32")
    assert time.monotonic() - start < 10
    assert "config.json" not in str(info.value)


def test_truncated_files(tmp_path):
    data = (FIXTURES / "adm_small.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated safetensors") as info:
        load_prior(path)
    assert str(path) in str(info.value)
    path.write_bytes(data[:100])                   # even the header is cut
    with pytest.raises(CheckpointError, match="truncated safetensors"):
        load_prior(path)
    full = tmp_path / "full.pt"
    torch.save(_sd("ddpm"), full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[:-5000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_prior(cut)


def test_unknown_keys_name_the_closest_format(tmp_path):
    sd = dict(_sd("adm"))
    sd["input_blocks.0.0.conv.weight"] = sd.pop("input_blocks.0.0.weight")
    path = tmp_path / "renamed.safetensors"
    save_file(sd, path)                            # no metadata: detection from the keys
    with pytest.raises(CheckpointError) as info:
        load_prior(path)
    msg = str(info.value)
    assert "unknown architecture" in msg and "guided-diffusion ADM" in msg
    assert "input_blocks.0.0.weight" in msg and "input_blocks.0.0.conv.weight" in msg

    sd = dict(_sd("ddpm"))
    sd["temb.dense0.weight"] = sd.pop("temb.dense.0.weight")
    save_file(sd, path)
    with pytest.raises(CheckpointError, match="Closest known format: DDPM") as info:
        load_prior(path)
    assert "temb.dense.0.weight" in str(info.value)

    # detected as ADM, but a key is missing: the layout check names it
    sd = dict(_sd("adm"))
    del sd["middle_block.1.qkv.bias"]
    save_file(sd, path, metadata=_meta("adm"))
    with pytest.raises(CheckpointError, match=r"1 missing \(first: \['middle_block.1.qkv.bias'\]\)"):
        load_prior(path)

    save_file({"encoder.layers.0.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="Closest known format"):
        load_prior(path)


def test_raw_diffusers_state_dict_asks_for_the_folder(tmp_path):
    unet = _tiny_unet()
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(unet.state_dict(), path)
    with pytest.raises(CheckpointError, match="pass the folder"):
        load_prior(path)


def test_shape_mismatch(tmp_path):
    sd = dict(_sd("adm"))
    sd["time_embed.2.weight"] = torch.zeros(128, 127)
    path = tmp_path / "bad.safetensors"
    save_file(sd, path, metadata=_meta("adm"))
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'time_embed.2.weight'.*\[128, 127\].*\[128, 128\]"):
        load_prior(path)
    sd = dict(_sd("ddpm"))
    sd["norm_out.weight"] = torch.zeros(31)
    torch.save(sd, tmp_path / "bad.pt")           # inferred config: the mismatch is still caught
    with pytest.raises(CheckpointError, match="shape mismatch for 'norm_out.weight'"):
        load_prior(tmp_path / "bad.pt")


@pytest.mark.parametrize("kind", ["adm", "ddpm"])
def test_wrong_image_size(kind):
    prior = load_prior(FIXTURES / f"{kind}_small.safetensors")
    with torch.no_grad(), pytest.raises(ValueError, match="built for 32x32"):
        prior.eps(torch.randn(1, 3, 64, 64), torch.tensor([10]))


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE.*local folder") as info:
        load_prior("google/ddpm-cifar10-32")
    assert "google/ddpm-cifar10-32" in str(info.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        load_prior(tmp_path / "x.pt", dtype=torch.int8)
    with pytest.raises(TypeError):
        load_prior(123)
