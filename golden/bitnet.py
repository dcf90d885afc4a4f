"""BitNet b1.58 quantization: absmean ternary weights, absmax INT8 activations, output rescale.

This module defines bit for bit the numerics of a BitLinear layer on the overlay.

Weights (offline, by the compiler)
----------------------------------
Per tensor ``W`` of shape ``[N, K]`` (N outputs, K inputs)::

    gamma = float32( max(mean(|W|), 1e-5) )      mean computed in float64, rounded once (RNE)
    wq    = clamp(round_half_even(W / gamma), -1, 1)   W and gamma taken exactly as float64

``wq`` is ``int8`` in {-1, 0, 1}; ``gamma`` is a 0-dim ``float32`` tensor (the stored scale). Using
the stored float32 ``gamma`` in the division keeps ``wq`` consistent with what the hardware
multiplies by. (The published recipe divides by the unrounded mean; the two agree except when a
weight lies within ~2^-24 relative of a rounding boundary ``gamma/2`` or ``3*gamma/2``.)

Activations (online, per token, by the NPE)
-------------------------------------------
For ``x`` of shape ``[..., K]`` in binary32::

    amax = max(max_k |x[..., k]|, float32(1e-5))         exact (max and abs are exact)
    inv  = float32(127) / amax                            one binary32 division, RNE
    xq   = clamp(round_half_even(x * inv), -128, 127)     one binary32 multiply (RNE), then
                                                          round to integer (ties to even), saturate

``xq`` is ``int8``; ``amax`` is ``float32 [..., 1]``. ``|xq| <= 127`` in practice (the element
equal to ``amax`` maps to ``RN(amax * RN(127/amax))``, which rounds to 127); -128 is still allowed by
the format and the TLMM engine handles it.

Output (per output element, after the exact integer accumulation)
----------------------------------------------------------------
::

    acc   = sum_k xq[k] * wq[n, k]                         exact int64 (|acc| <= 128*K)
    g127  = float32(gamma) / float32(127)                  one binary32 division per tensor
    scale = amax * g127                                    one binary32 multiply per token
    y     = float32(acc) * scale                           exact conversion (|acc| < 2^24), one
                                                           binary32 multiply per output

so ``y = acc * gamma * amax / 127 = acc * gamma / s`` with ``s = 127 / amax`` as in the published
recipe, with three binary32 roundings (relative error <= 3 * 2^-24 vs exact real arithmetic on the
same ``acc``, ``amax``, ``gamma``). Overflow to Inf in these float steps is rejected with
:class:`NonFiniteError` (the overlay reports it as an error status).

Error policy
------------
Non-finite inputs -> :class:`NonFiniteError`; wrong ranks / shapes / dtypes / value ranges ->
:class:`FormatError`. Float inputs of the online path must be float32 (float16 / bfloat16 are
accepted and converted exactly); float64 is rejected there because it cannot be narrowed exactly.
"""

from __future__ import annotations

import torch

from .errors import FormatError, NonFiniteError, check_finite, check_int_range

__all__ = [
    "SCALE_MIN",
    "ACT_QMAX",
    "ACT_QMIN",
    "ACT_QRANGE",
    "RESCALE_ACC_LIMIT",
    "ternary_weight_quant",
    "int8_act_quant",
    "out_scale",
    "rescale",
    "bitlinear",
    "bitlinear_float",
    "bitlinear_fakequant_ref",
]

SCALE_MIN = 1e-5
"""Lower clamp of both gamma = mean|W| and amax = max|x| (as in the published recipe)."""
ACT_QMIN, ACT_QMAX = -128, 127
"""INT8 activation code range (saturation bounds)."""
ACT_QRANGE = 127
"""Activation scale numerator: s = ACT_QRANGE / amax."""
RESCALE_ACC_LIMIT = 1 << 24
"""|acc| must be below this so float32(acc) is exact (binary32 has a 24-bit significand)."""

_F32 = torch.float32
_SCALE_MIN_F32 = torch.tensor(SCALE_MIN, dtype=_F32)  # 1e-5 rounded once to binary32
_QRANGE_F32 = torch.tensor(float(ACT_QRANGE), dtype=_F32)
_EXACT_TO_F32 = (torch.float16, torch.bfloat16, torch.float32)


def _require_tensor(t, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise FormatError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")


def _as_f32_online(x: torch.Tensor, what: str) -> torch.Tensor:
    """Validate an online float input ``[..., K]`` and convert it exactly to float32."""
    _require_tensor(x, what)
    if x.dtype not in _EXACT_TO_F32:
        raise FormatError(
            f"{what}: expected float32 (or float16/bfloat16, converted exactly), got {x.dtype}"
        )
    if x.dim() < 1 or x.shape[-1] < 1:
        raise FormatError(f"{what}: expected shape [..., K] with K >= 1, got {tuple(x.shape)}")
    check_finite(x, what)
    return x.to(_F32)


def _as_gamma(gamma) -> torch.Tensor:
    """Validate the per-tensor weight scale: a positive finite float32 0-dim tensor (or a float)."""
    if isinstance(gamma, (float, int)) and not isinstance(gamma, bool):
        gamma = torch.tensor(float(gamma), dtype=_F32)  # rounded once to binary32 (RNE)
    _require_tensor(gamma, "gamma")
    if gamma.dtype != _F32 or gamma.numel() != 1 or gamma.dim() > 1:
        raise FormatError(
            f"gamma: expected a float32 0-dim tensor, got {gamma.dtype} shape {tuple(gamma.shape)}"
        )
    gamma = gamma.reshape(())
    check_finite(gamma, "gamma")
    if float(gamma) <= 0.0:
        raise FormatError(f"gamma: expected a positive scale, got {float(gamma)}")
    return gamma


def _require_finite_result(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{what}: binary32 overflow (result not finite); scales too large")


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def ternary_weight_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization of a weight matrix (offline, per tensor).

    Parameters
    ----------
    w : Tensor, floating dtype (float16/bfloat16/float32/float64), shape [N, K]
        Float weights, finite, ``N, K >= 1``.

    Returns
    -------
    wq : Tensor, int8, shape [N, K]
        ``clamp(round_half_even(w / gamma), -1, 1)``, computed in float64 with ``gamma`` the
        stored float32 value.
    gamma : Tensor, float32, 0-dim
        ``float32(max(mean(|w|), 1e-5))``: mean in float64, one RNE rounding to binary32.

    Raises
    ------
    FormatError
        If ``w`` is not a 2-D floating tensor with ``N, K >= 1``.
    NonFiniteError
        If ``w`` holds NaN or Inf.
    """
    _require_tensor(w, "w")
    if not w.is_floating_point():
        raise FormatError(f"w: expected a floating-point tensor, got {w.dtype}")
    if w.dim() != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise FormatError(f"w: expected shape [N, K] with N, K >= 1, got {tuple(w.shape)}")
    check_finite(w, "w")
    w64 = w.to(torch.float64)
    mean_abs = float(w64.abs().mean())  # offline constant: float64 is allowed here
    gamma = torch.tensor(max(mean_abs, SCALE_MIN), dtype=_F32)
    q = torch.round(w64 / gamma.to(torch.float64)).clamp_(-1, 1)
    return q.to(torch.int8), gamma


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------
def int8_act_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax INT8 quantization of activations, per token (over the last dimension).

    Parameters
    ----------
    x : Tensor, float32 (float16/bfloat16 accepted, converted exactly), shape [..., K]
        Finite activations, ``K >= 1``.

    Returns
    -------
    xq : Tensor, int8, shape [..., K]
        ``clamp(round_half_even(x * inv), -128, 127)`` with ``x * inv`` one binary32 multiply.
    amax : Tensor, float32, shape [..., 1]
        ``max(max|x|, float32(1e-5))`` (exact).

    Notes
    -----
    ``inv = float32(127) / amax`` is one correctly rounded binary32 division per token. Rounding
    to integer is ties-to-even; values beyond the INT8 range saturate (they cannot occur for
    finite inputs, but the clamp is the hardware behaviour).

    Raises
    ------
    FormatError
        Wrong dtype (integers, float64) or shape.
    NonFiniteError
        NaN or Inf in ``x``.
    """
    x32 = _as_f32_online(x, "x")
    amax = torch.maximum(x32.abs().amax(dim=-1, keepdim=True), _SCALE_MIN_F32)
    inv = _QRANGE_F32 / amax  # binary32 division, RNE
    scaled = x32 * inv  # binary32 multiply, RNE
    xq = torch.round(scaled).clamp_(ACT_QMIN, ACT_QMAX).to(torch.int8)
    return xq, amax


# ---------------------------------------------------------------------------------------------
# Output scale and rescale
# ---------------------------------------------------------------------------------------------
def out_scale(amax: torch.Tensor, gamma) -> torch.Tensor:
    """Combined output scale per token: ``amax * (gamma / 127)`` in binary32.

    Parameters
    ----------
    amax : Tensor, float32, shape [..., 1]
        Per-token activation absmax from :func:`int8_act_quant` (positive, finite).
    gamma : Tensor, float32, 0-dim (a Python float is rounded once to binary32)
        Per-tensor weight scale (positive, finite).

    Returns
    -------
    Tensor, float32, shape [..., 1]
        ``amax * g127`` with ``g127 = float32(gamma) / float32(127)``: one binary32 division per
        tensor, one binary32 multiply per token, both RNE.

    Raises
    ------
    FormatError
        Wrong dtype / shape, non-positive scales.
    NonFiniteError
        Non-finite inputs or overflow of the product.
    """
    g = _as_gamma(gamma)
    _require_tensor(amax, "amax")
    if amax.dtype != _F32 or amax.dim() < 1 or amax.shape[-1] != 1:
        raise FormatError(
            f"amax: expected float32 [..., 1], got {amax.dtype} shape {tuple(amax.shape)}"
        )
    check_finite(amax, "amax")
    if amax.numel() and bool((amax <= 0).any()):
        raise FormatError(f"amax: expected positive values, found min {float(amax.min())}")
    g127 = g / _QRANGE_F32  # binary32 division, once per tensor
    scale = amax * g127  # binary32 multiply, once per token
    _require_finite_result(scale, "out_scale")
    return scale


def rescale(acc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Turn exact integer accumulators into float32 outputs: ``float32(acc) * scale``.

    Parameters
    ----------
    acc : Tensor, integer dtype (normally int64), shape [..., N]
        Accumulators; ``|acc| < 2^24`` so the conversion to binary32 is exact.
    scale : Tensor, float32, shape [..., 1] (broadcast against ``acc``)
        Output scale from :func:`out_scale`.

    Returns
    -------
    Tensor, float32, shape [..., N]
        One binary32 multiply (RNE) per element.

    Raises
    ------
    FormatError
        Non-integer ``acc``, ``|acc| >= 2^24``, non-float32 ``scale``, shapes that do not broadcast.
    NonFiniteError
        Non-finite ``scale`` or overflow of the product.
    """
    _require_tensor(acc, "acc")
    _require_tensor(scale, "scale")
    lim = RESCALE_ACC_LIMIT
    check_int_range(acc, -(lim - 1), lim - 1, "acc (|acc| < 2^24 for an exact float32 conversion)")
    if scale.dtype != _F32:
        raise FormatError(f"scale: expected float32, got {scale.dtype}")
    check_finite(scale, "scale")
    try:
        torch.broadcast_shapes(acc.shape, scale.shape)
    except RuntimeError as exc:
        raise FormatError(
            f"scale: shape {tuple(scale.shape)} does not broadcast against acc {tuple(acc.shape)}"
        ) from exc
    y = acc.to(_F32) * scale  # conversion exact, multiply RNE
    _require_finite_result(y, "rescale")
    return y


# ---------------------------------------------------------------------------------------------
# BitLinear
# ---------------------------------------------------------------------------------------------
def _check_ternary(wq: torch.Tensor, k: int | None = None) -> torch.Tensor:
    _require_tensor(wq, "wq")
    if wq.dtype != torch.int8 or wq.dim() != 2:
        raise FormatError(f"wq: expected int8 [N, K], got {wq.dtype} shape {tuple(wq.shape)}")
    check_int_range(wq, -1, 1, "wq (ternary weights)")
    if k is not None and wq.shape[1] != k:
        raise FormatError(f"wq: expected K={k} columns to match x, got shape {tuple(wq.shape)}")
    return wq


def bitlinear(x: torch.Tensor, wq: torch.Tensor, gamma) -> torch.Tensor:
    """BitLinear as the overlay computes it: INT8 act quant, exact ternary matmul, rescale.

    Parameters
    ----------
    x : Tensor, float32 (float16/bfloat16 accepted), shape [..., K]
        Finite activations.
    wq : Tensor, int8, shape [N, K]
        Ternary weights in {-1, 0, 1}.
    gamma : Tensor, float32, 0-dim
        Per-tensor weight scale.

    Returns
    -------
    Tensor, float32, shape [..., N]
        ``rescale(xq @ wq^T, out_scale(amax, gamma))`` with the matmul in exact int64.

    Raises
    ------
    FormatError, NonFiniteError
        See :func:`int8_act_quant`, :func:`out_scale`, :func:`rescale`; ``wq`` not ternary int8 or
        its K differs from ``x``'s.
    """
    x32 = _as_f32_online(x, "x")
    _check_ternary(wq, x32.shape[-1])
    xq, amax = int8_act_quant(x32)
    acc = xq.to(torch.int64) @ wq.to(torch.int64).T  # integer matmul: exact, order independent
    return rescale(acc, out_scale(amax, gamma))


def bitlinear_float(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Float reference of a linear layer without any quantization: ``x @ w^T`` in float64.

    Parameters
    ----------
    x : Tensor, floating, shape [..., K]
    w : Tensor, floating, shape [N, K]
        Unquantized weights.

    Returns
    -------
    Tensor, float64, shape [..., N]
        Reference only (not bit-exact with anything in hardware; float64 matmul).

    Raises
    ------
    FormatError, NonFiniteError
        Non-float inputs, mismatched K, NaN/Inf.
    """
    for t, what in ((x, "x"), (w, "w")):
        _require_tensor(t, what)
        if not t.is_floating_point():
            raise FormatError(f"{what}: expected a floating-point tensor, got {t.dtype}")
        check_finite(t, what)
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise FormatError(f"x {tuple(x.shape)} and w {tuple(w.shape)}: expected [..., K] and [N, K]")
    return x.to(torch.float64) @ w.to(torch.float64).T


def bitlinear_fakequant_ref(x: torch.Tensor, wq: torch.Tensor, gamma) -> torch.Tensor:
    """Float64 transcription of the published BitNet b1.58 forward (fake quantization).

    ``s = 127 / max(max|x|, 1e-5)``; ``xq = clamp(round(x * s), -128, 127)``;
    ``y = (xq @ wq^T) * gamma / s``, everything in float64.

    Parameters
    ----------
    x : Tensor, floating, shape [..., K]
    wq : Tensor, int8, shape [N, K]
    gamma : Tensor float32 0-dim or float

    Returns
    -------
    Tensor, float64, shape [..., N]
        Reference for :func:`bitlinear`; they differ by the binary32 roundings of the hardware
        path (see the module docstring) and, rarely, by one activation code where ``x * s`` is
        within ~2^-23 relative of a rounding tie.
    """
    _require_tensor(x, "x")
    if not x.is_floating_point():
        raise FormatError(f"x: expected a floating-point tensor, got {x.dtype}")
    check_finite(x, "x")
    _check_ternary(wq, x.shape[-1] if x.dim() else None)
    g = float(_as_gamma(gamma))
    x64 = x.to(torch.float64)
    s = ACT_QRANGE / x64.abs().amax(dim=-1, keepdim=True).clamp_min(SCALE_MIN)
    xq = torch.round(x64 * s).clamp_(ACT_QMIN, ACT_QMAX)
    return (xq @ wq.to(torch.float64).T) * g / s
