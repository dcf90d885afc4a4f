"""Exception types and the input policy shared by the golden model, compiler and drivers.

NaN/Inf policy
--------------
The overlay has no representation for non-finite activations or weights in its integer and
block-floating-point datapaths. The golden model therefore *rejects* non-finite inputs at the
boundary where they would enter such a datapath (quantizers, BFP conversion, checkpoint loading)
with :class:`NonFiniteError`; the hardware reports the same condition as an error status.
Intermediate float values produced by the golden arithmetic itself are finite by construction
(bounded integer accumulators, saturating conversions).
"""

from __future__ import annotations

import torch

__all__ = [
    "TernopuError",
    "FormatError",
    "NonFiniteError",
    "CheckpointError",
    "ConfigError",
    "check_finite",
    "check_int_range",
]


class TernopuError(Exception):
    """Base class of every error ternopu raises on purpose."""


class FormatError(TernopuError, ValueError):
    """A tensor does not fit a number format: shape, group divisibility, bit width, value range."""


class NonFiniteError(FormatError):
    """NaN or Inf where the datapath accepts only finite values (see the module's policy)."""


class CheckpointError(TernopuError, ValueError):
    """A checkpoint is missing, truncated, malformed, or inconsistent with its config."""


class ConfigError(TernopuError, ValueError):
    """A model or overlay configuration is invalid or inconsistent."""


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` if ``t`` holds NaN or Inf."""
    if t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n = int(bad.sum())
            idx = tuple(int(i) for i in bad.nonzero()[0])
            raise NonFiniteError(
                f"{what}: {n} non-finite value(s) (first at index {idx}: {t[idx].item()}); "
                "ternopu accepts finite inputs only"
            )


def check_int_range(t: torch.Tensor, lo: int, hi: int, what: str) -> None:
    """Raise :class:`FormatError` if integer tensor ``t`` has values outside ``[lo, hi]``."""
    if t.is_floating_point():
        raise FormatError(f"{what}: expected an integer tensor, got {t.dtype}")
    if t.numel():
        tmin, tmax = int(t.min()), int(t.max())
        if tmin < lo or tmax > hi:
            raise FormatError(f"{what}: values must lie in [{lo}, {hi}], found [{tmin}, {tmax}]")
