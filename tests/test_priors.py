import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from fixedpoint_ir import GaussianMixturePrior, GaussianPrior, ModulePrior


def _mixture_log_density(x, ab, mu, var):
    s = ab * var + 1 - ab
    comp = lambda m: -0.5 * (x - m) ** 2 / s  # noqa: E731
    return torch.logaddexp(comp(ab ** 0.5 * mu), comp(-ab ** 0.5 * mu)).sum()


@given(st.floats(0.0, 1.0), st.floats(0.01, 0.5), st.integers(0, 999))
def test_mixture_eps_is_the_scaled_score(mu, var, t):
    """ε(x, t) = −√(1−ᾱ_t) ∇ log p_t(x): checked against autograd of the exact density."""
    prior = GaussianMixturePrior(mu, var)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    ab = prior.alphas_cumprod[t]
    (score,) = torch.autograd.grad(_mixture_log_density(x, ab, mu, var), x)
    eps = prior.eps(x.detach(), torch.tensor([t]))
    torch.testing.assert_close(eps, -(1 - ab).sqrt() * score, rtol=1e-9, atol=1e-12)


def test_gaussian_prior_is_mixture_with_one_component():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([3, 700])
    torch.testing.assert_close(GaussianPrior(0.0, 0.2).eps(x, t), GaussianMixturePrior(0.0, 0.2).eps(x, t))


class _EchoNet(nn.Module):
    """Returns 6 channels (ε and a fake variance part) and records batch sizes."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.batches = []

    def forward(self, x, t):
        self.batches.append(x.shape[0])
        return torch.cat([x * self.scale + t.view(-1, 1, 1, 1), -x], dim=1)


@pytest.mark.parametrize("max_batch", [None, 1, 3, 7])
def test_module_prior_chunks_and_cuts_variance_channels(max_batch):
    net = _EchoNet()
    prior = ModulePrior(net, max_batch=max_batch)
    x = torch.randn(7, 3, 4, 4)
    t = torch.arange(7)
    eps = prior.eps(x, t)
    assert eps.shape == x.shape
    torch.testing.assert_close(eps, x * 2 + t.view(-1, 1, 1, 1).float())
    assert max(net.batches) <= (max_batch or 7) and sum(net.batches) == 7


def test_module_prior_runs_network_in_its_dtype_and_returns_input_dtype():
    net = _EchoNet().to(torch.bfloat16)
    eps = ModulePrior(net).eps(torch.randn(2, 3, 4, 4), torch.tensor([1, 2]))
    assert eps.dtype == torch.float32


def test_prior_rejects_bad_inputs():
    prior = GaussianMixturePrior()
    with pytest.raises(ValueError, match="t must lie"):
        prior.eps(torch.zeros(1, 3, 4, 4), torch.tensor([1000]))
    with pytest.raises(ValueError, match="shape"):
        prior.eps(torch.zeros(3, 4, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match="max_batch"):
        GaussianMixturePrior(max_batch=0)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        GaussianMixturePrior(alphas_cumprod=torch.linspace(0.1, 0.9, 10))


def test_fixed_size_module_prior_rejects_other_sizes():
    prior = ModulePrior(_EchoNet(), image_size=(8, 8))
    with pytest.raises(ValueError, match="built for 8x8"):
        prior.eps(torch.zeros(1, 3, 4, 4), torch.tensor([1]))
