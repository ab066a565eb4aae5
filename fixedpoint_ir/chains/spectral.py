"""What the chains that filter in the SVD basis of A (DDRM, DiffPIR) share: the check that the
operator exposes what they need, and a parameter record that builds its chain."""
from __future__ import annotations

import dataclasses

__all__ = ["SpectralChoice", "check_spectral_operator", "check_unit"]


def check_unit(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_spectral_operator(chain: str, operator, sigma_y: float) -> None:
    """A chain that filters in the SVD basis needs P = A†A (σ_y = 0) or the singular values of A
    (σ_y > 0); ``ValueError`` naming what the operator lacks otherwise."""
    if operator is None:
        raise ValueError(f"chain={chain!r} needs an operator (use the default chain 'ddnm' for "
                         "unconditional sampling)")
    if not getattr(operator, "is_projector", False):
        raise ValueError(f"chain={chain!r} needs an operator whose A†A is an orthogonal projector; "
                         f"{type(operator).__name__} does not declare one (is_projector=False)")
    if sigma_y > 0 and not operator.has_spectrum:
        raise ValueError(f"chain={chain!r} with sigma_y > 0 needs the singular values of A; "
                         f"{type(operator).__name__} does not expose them (no filtered_pinv / "
                         "singular_value): use sigma_y=0 or chain='ddnm'")


class SpectralChoice:
    """Base of a frozen dataclass of chain parameters: subclasses set ``name`` and ``chain_class``
    (whose keyword arguments are the dataclass fields)."""

    name: str
    chain_class: type

    def check_operator(self, operator, sigma_y: float) -> None:
        """The filters need P = A†A (σ_y = 0) or the singular values of A (σ_y > 0)."""
        check_spectral_operator(self.name, operator, sigma_y)

    def build(self, prior, coefficients, x_T, noise, operator, y, sigma_y, surrogate):
        return self.chain_class(prior, coefficients, x_T, noise, operator, y, sigma_y=sigma_y,
                                surrogate=surrogate, **dataclasses.asdict(self))
