#!/usr/bin/env python3
"""GPU decode baseline for ternopu: batch-1 decode of BitNet b1.58 2B4T and Llama-2-7B shapes.

Self-contained (torch + triton only, no repository imports) so it runs on the device machine as is.

Paths measured per (model, context):
  bf16_torch : bf16 weights, every op plain PyTorch (cuBLAS linears, F.rms_norm, SDPA, torch RoPE).
  bf16_fused : bf16 weights through cuBLAS (F.linear), the glue (residual+RMSNorm, RoPE+KV write,
               gated activation [+ sub-norm]) in small fused Triton kernels; attention = torch SDPA.
  int4       : (Llama-2-7B) Triton W4A16 GEMV on packed int4 weights (8 per int32, along K),
               fp16 scales and packed 4-bit zeros per group of 128 input rows; same glue as bf16_fused.
  ternary    : (BitNet 2B4T) Triton GEMV on 2-bit packed ternary codes (16 per int32, along K) with a
               per-tensor fp32 scale; activations bf16 (W1.58A16, fp32 accumulation); same glue.
  int4_v1 / ternary_v1 : the first version's kernels only (v1/v2); int4 / ternary: best per shape of
               v1/v2 and the split-K v3 kernels; ternary_a8: W1.58A8, INT8 activations quantized in the
               glue kernels, dp4a GEMV (inline PTX), split-K.  See bench/README.md.
Embedding and LM head stay bf16 in every path (as in GPTQ and BitNet 2B4T checkpoints; BitNet's
LM head is tied to the embedding).  One decode step = embedding row + all layers + final norm +
LM head, captured in one CUDA graph and replayed; timed with CUDA events; median of trials.

Usage:
  python3 bench/gpu_baseline.py --out DIR            # full measurement on a CUDA GPU
  python3 bench/gpu_baseline.py --quick --out DIR    # few layers, short timing (smoke test)
  TRITON_INTERPRET=1 python3 bench/gpu_baseline.py --device cpu --tiny   # logic check on CPU
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except Exception:  # pragma: no cover
    HAVE_TRITON = False

USE_ASM = os.environ.get("TRITON_INTERPRET") != "1"   # dp4a inline PTX (interpreter: plain-Triton fallback)
PEAK_BW = 3.35e12  # H100 SXM HBM3, bytes/s (datasheet)
GROUP = 128        # INT4 group size (input rows per scale/zero)

MODELS = {
    "bitnet-2b4t": dict(hidden=2560, ffn=6912, layers=30, heads=20, kv_heads=5, head_dim=128,
                        vocab=128256, act="relu2", subnorm=True, tied=True, rope_theta=5e5,
                        quant="ternary"),
    "llama2-7b": dict(hidden=4096, ffn=11008, layers=32, heads=32, kv_heads=32, head_dim=128,
                      vocab=32000, act="silu", subnorm=False, tied=False, rope_theta=1e4,
                      quant="int4"),
}
TINY = {
    "bitnet-2b4t": dict(hidden=256, ffn=384, layers=2, heads=4, kv_heads=1, head_dim=64, vocab=512),
    "llama2-7b": dict(hidden=256, ffn=640, layers=2, heads=4, kv_heads=4, head_dim=64, vocab=512),
}

# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
if HAVE_TRITON:

    @triton.jit
    def w4a16_gemv_kernel(x_ptr, qw_ptr, sc_ptr, qz_ptr, y_ptr, N, K,
                          BLOCK_N: tl.constexpr, GPB: tl.constexpr):
        """y[n] = sum_k (q[n,k] - z[g,n]) * s[g,n] * x[k],  g = k // 128.
        qw: int32 [N, K/8], nibble j of word (n, w) is q[n, 8w+j] (LSB first).
        sc: fp16 [K/128, N].  qz: int32 [K/128, N/8], nibble j of word (g, m) is z[g, 8m+j].
        Zero folded: per group, s * (sum_k q x - z * sum_k x)."""
        pid = tl.program_id(0)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        KW = K // 8
        NG = K // 128
        offs_w = tl.arange(0, GPB * 16)
        offs_g = tl.arange(0, GPB)
        offs_k = tl.arange(0, GPB * 128)
        shifts = tl.arange(0, 8) * 4
        zshift = (offs_n % 8) * 4
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for g0 in range(0, NG, GPB):
            wcol = g0 * 16 + offs_w
            qw = tl.load(qw_ptr + offs_n[:, None] * KW + wcol[None, :],
                         mask=mask_n[:, None] & (wcol < KW)[None, :], other=0)
            q = (qw[:, :, None] >> shifts[None, None, :]) & 0xF
            q = tl.reshape(q, (BLOCK_N, GPB, 128)).to(tl.float32)
            kk = g0 * 128 + offs_k
            x = tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
            x3 = tl.reshape(x, (1, GPB, 128))
            dot = tl.sum(q * x3, axis=2)          # [BLOCK_N, GPB]
            xs = tl.sum(x3, axis=2)               # [1, GPB]
            g = g0 + offs_g
            gm = mask_n[:, None] & (g < NG)[None, :]
            s = tl.load(sc_ptr + g[None, :] * N + offs_n[:, None], mask=gm, other=0.0).to(tl.float32)
            zw = tl.load(qz_ptr + g[None, :] * (N // 8) + (offs_n // 8)[:, None], mask=gm, other=0)
            z = ((zw >> zshift[:, None]) & 0xF).to(tl.float32)
            acc += tl.sum(s * (dot - z * xs), axis=1)
        tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_n)

    @triton.jit
    def ternary_gemv_kernel(x_ptr, w_ptr, scale_ptr, y_ptr, N, K,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """y[n] = scale * sum_k (c[n,k] - 1) * x[k];  c in {0,1,2} (= w + 1), 2 bits each.
        w: int32 [N, K/16], code j of word (n, m) is c[n, 16m+j] (LSB first)."""
        pid = tl.program_id(0)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        KW = K // 16
        offs_w = tl.arange(0, BLOCK_K // 16)
        offs_k = tl.arange(0, BLOCK_K)
        shifts = tl.arange(0, 16) * 2
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            wcol = k0 // 16 + offs_w
            w = tl.load(w_ptr + offs_n[:, None] * KW + wcol[None, :],
                        mask=mask_n[:, None] & (wcol < KW)[None, :], other=0)
            c = (w[:, :, None] >> shifts[None, None, :]) & 3
            c = tl.reshape(c, (BLOCK_N, BLOCK_K)).to(tl.float32)
            kk = k0 + offs_k
            x = tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
            acc += tl.sum(c * x[None, :], axis=1) - tl.sum(x, axis=0)
        scale = tl.load(scale_ptr)
        tl.store(y_ptr + offs_n, (acc * scale).to(y_ptr.dtype.element_ty), mask=mask_n)

    @triton.jit
    def w4a16_gemv_v2_kernel(x_ptr, qw_ptr, sc_ptr, qz_ptr, y_ptr, N, K,
                             BLOCK_N: tl.constexpr, GPB: tl.constexpr):
        """Same function as w4a16_gemv_kernel; no 3-D reshape: a static loop over the 8 nibble
        positions of each int32 word, x read strided, nibble -> float by the 2^23 magic-number trick
        (OR into the mantissa, subtract 2^23) instead of an int->float convert.  Zero folded per word:
        s * (sum_j q_j x_j - z * sum_j x_j)."""
        pid = tl.program_id(0)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        KW = K // 8
        NG = K // 128
        offs_w = tl.arange(0, GPB * 16)
        zshift = (offs_n % 8) * 4
        acc2 = tl.zeros([BLOCK_N, GPB * 16], dtype=tl.float32)
        for g0 in range(0, NG, GPB):
            wcol = g0 * 16 + offs_w
            wm = wcol < KW
            m2 = mask_n[:, None] & wm[None, :]
            qw = tl.load(qw_ptr + offs_n[:, None] * KW + wcol[None, :], mask=m2, other=0)
            dot = tl.zeros([BLOCK_N, GPB * 16], dtype=tl.float32)
            xs = tl.zeros([GPB * 16], dtype=tl.float32)
            for j in tl.static_range(8):
                xj = tl.load(x_ptr + wcol * 8 + j, mask=wm, other=0.0).to(tl.float32)
                qj = (((qw >> (4 * j)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                dot += qj * xj[None, :]
                xs += xj
            gw = g0 + offs_w // 16
            sc = tl.load(sc_ptr + gw[None, :] * N + offs_n[:, None], mask=m2, other=0.0).to(tl.float32)
            zw = tl.load(qz_ptr + gw[None, :] * (N // 8) + (offs_n // 8)[:, None], mask=m2, other=0)
            z = (((zw >> zshift[:, None]) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            acc2 += sc * (dot - z * xs[None, :])
        acc = tl.sum(acc2, axis=1)
        tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_n)

    @triton.jit
    def ternary_gemv_v2_kernel(x_ptr, w_ptr, scale_ptr, y_ptr, N, K,
                               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """Same function as ternary_gemv_kernel; static loop over the 16 code positions of each word,
        code -> (c - 1) as float by the magic-number trick (OR into 2^23, subtract 2^23 + 1)."""
        pid = tl.program_id(0)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        KW = K // 16
        offs_w = tl.arange(0, BLOCK_K // 16)
        acc2 = tl.zeros([BLOCK_N, BLOCK_K // 16], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            wcol = k0 // 16 + offs_w
            wm = wcol < KW
            w = tl.load(w_ptr + offs_n[:, None] * KW + wcol[None, :], mask=mask_n[:, None] & wm[None, :], other=0)
            for j in tl.static_range(16):
                xj = tl.load(x_ptr + wcol * 16 + j, mask=wm, other=0.0).to(tl.float32)
                cj = (((w >> (2 * j)) & 3) | 0x4B000000).to(tl.float32, bitcast=True) - 8388609.0
                acc2 += cj * xj[None, :]
        scale = tl.load(scale_ptr)
        acc = tl.sum(acc2, axis=1) * scale
        tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_n)

    # ---- v3 kernels: split-K grid (pid 1 = K slice), shift-free dequant, fp32 (atomic) output -------
    # Dequant without a per-code shift: the field (w & (mask << b)) OR'ed into the mantissa of 2^23 is
    # 2^23 + c * 2^b exactly; subtract 2^23 and multiply by x * 2^-b (exact power-of-two scaling of x,
    # done once per tile column and shared by all rows).  Fields above bit 21 (ternary) / 19 (int4)
    # come from one shifted copy of the word.  One LOP3 + FADD + FFMA per weight.

    @triton.jit
    def ternary_gemv_v3_kernel(x_ptr, w_ptr, scale_ptr, y_ptr, N, K, SPLIT_K,
                               BLOCK_N: tl.constexpr, BW: tl.constexpr, ATOMIC: tl.constexpr):
        """Same function and weight layout as ternary_gemv_kernel (int32 [N, K/16], code j of word m is
        c[n, 16m+j]); grid (N/BLOCK_N, SPLIT_K); K slice = whole multiples of BW words."""
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        KW = K // 16
        chunk = tl.cdiv(tl.cdiv(KW, SPLIT_K), BW) * BW
        k_lo = pid_k * chunk
        k_hi = tl.minimum(k_lo + chunk, KW)
        offs_w = tl.arange(0, BW)
        acc2 = tl.zeros([BLOCK_N, BW], dtype=tl.float32)
        xs = tl.zeros([BW], dtype=tl.float32)
        for w0 in range(k_lo, k_hi, BW):
            wcol = w0 + offs_w
            wm = wcol < k_hi
            w = tl.load(w_ptr + offs_n[:, None] * KW + wcol[None, :], mask=mask_n[:, None] & wm[None, :], other=0)
            wh = w >> 22
            for j in tl.static_range(16):
                xj = tl.load(x_ptr + wcol * 16 + j, mask=wm, other=0.0).to(tl.float32)
                xs += xj
                if j < 11:
                    cj = ((w & (3 << (2 * j))) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                    acc2 += cj * (xj * (1.0 / (1 << (2 * j))))[None, :]
                else:
                    cj = ((wh & (3 << (2 * (j - 11)))) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                    acc2 += cj * (xj * (1.0 / (1 << (2 * (j - 11)))))[None, :]
        scale = tl.load(scale_ptr)
        acc = (tl.sum(acc2, axis=1) - tl.sum(xs, axis=0)) * scale
        if ATOMIC:
            tl.atomic_add(y_ptr + offs_n, acc, mask=mask_n, sem="relaxed")
        else:
            tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_n)

    @triton.jit
    def w4a16_gemv_v3_kernel(x_ptr, qw_ptr, sc_ptr, qz_ptr, y_ptr, N, K, SPLIT_K,
                             BLOCK_N: tl.constexpr, GPB: tl.constexpr, ATOMIC: tl.constexpr):
        """Same function and layout as w4a16_gemv_kernel; grid (N/BLOCK_N, SPLIT_K), K slices of whole
        groups; per tile [BLOCK_N, GPB*16 words], group sums by a reshape, zero folded per group."""
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        BW: tl.constexpr = GPB * 16
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        KW = K // 8
        NG = K // 128
        chunk = tl.cdiv(tl.cdiv(KW, SPLIT_K), BW) * BW
        k_lo = pid_k * chunk
        k_hi = tl.minimum(k_lo + chunk, KW)
        offs_w = tl.arange(0, BW)
        offs_g = tl.arange(0, GPB)
        zshift = (offs_n % 8) * 4
        acc2 = tl.zeros([BLOCK_N, GPB], dtype=tl.float32)
        for w0 in range(k_lo, k_hi, BW):
            wcol = w0 + offs_w
            wm = wcol < k_hi
            qw = tl.load(qw_ptr + offs_n[:, None] * KW + wcol[None, :], mask=mask_n[:, None] & wm[None, :], other=0)
            qh = qw >> 20
            dot = tl.zeros([BLOCK_N, BW], dtype=tl.float32)
            xs = tl.zeros([BW], dtype=tl.float32)
            for j in tl.static_range(8):
                xj = tl.load(x_ptr + wcol * 8 + j, mask=wm, other=0.0).to(tl.float32)
                xs += xj
                if j < 5:
                    qj = ((qw & (15 << (4 * j))) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                    dot += qj * (xj * (1.0 / (1 << (4 * j))))[None, :]
                else:
                    qj = ((qh & (15 << (4 * (j - 5)))) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                    dot += qj * (xj * (1.0 / (1 << (4 * (j - 5)))))[None, :]
            dg = tl.sum(tl.reshape(dot, (BLOCK_N, GPB, 16)), axis=2)      # [BLOCK_N, GPB]
            xg = tl.sum(tl.reshape(xs, (GPB, 16)), axis=1)                # [GPB]
            g = w0 // 16 + offs_g
            gm = mask_n[:, None] & (g < NG)[None, :]
            s = tl.load(sc_ptr + g[None, :] * N + offs_n[:, None], mask=gm, other=0.0).to(tl.float32)
            zw = tl.load(qz_ptr + g[None, :] * (N // 8) + (offs_n // 8)[:, None], mask=gm, other=0)
            z = ((zw >> zshift[:, None]) & 0xF).to(tl.float32)
            acc2 += s * (dg - z * xg[None, :])
        acc = tl.sum(acc2, axis=1)
        if ATOMIC:
            tl.atomic_add(y_ptr + offs_n, acc, mask=mask_n, sem="relaxed")
        else:
            tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_n)

    @triton.jit
    def ternary_a8_kernel(xq_ptr, meta_ptr, w_ptr, scale_ptr, y_ptr, N, K, SPLIT_K,
                          BLOCK_N: tl.constexpr, BW: tl.constexpr, ATOMIC: tl.constexpr,
                          USE_ASM: tl.constexpr):
        """W1.58A8: same weight layout as ternary_gemv_kernel; activations INT8 (per-token absmax,
        meta = [x scale, sum of x codes]), stored permuted within each 16-block (position 4j+b holds
        x[16m+4b+j]) and read as int32 words, so that (w >> 2j) & 0x03030303 (byte b = code 4b+j)
        meets its four activations in one word: one dp4a per 4 weights, int32 accumulation.
        y = w_scale * x_scale * (sum c*xq - sum xq)."""
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        KW = K // 16
        chunk = tl.cdiv(tl.cdiv(KW, SPLIT_K), BW) * BW
        k_lo = pid_k * chunk
        k_hi = tl.minimum(k_lo + chunk, KW)
        offs_w = tl.arange(0, BW)
        acc = tl.zeros([BLOCK_N, BW], dtype=tl.int32)
        for w0 in range(k_lo, k_hi, BW):
            wcol = w0 + offs_w
            wm = wcol < k_hi
            w = tl.load(w_ptr + offs_n[:, None] * KW + wcol[None, :], mask=mask_n[:, None] & wm[None, :], other=0)
            for j in tl.static_range(4):
                xj = tl.load(xq_ptr + wcol * 4 + j, mask=wm, other=0)
                t = (w >> (2 * j)) & 0x03030303
                if USE_ASM:
                    acc = tl.inline_asm_elementwise("dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r",
                                                    [t, tl.broadcast_to(xj[None, :], (BLOCK_N, BW)), acc],
                                                    dtype=tl.int32, is_pure=True, pack=1)
                else:
                    for b in tl.static_range(4):
                        xb = (xj << (24 - 8 * b)) >> 24
                        acc += ((t >> (8 * b)) & 0xFF) * xb[None, :]
        s = tl.sum(acc, axis=1)
        xscale = tl.load(meta_ptr)
        xsum = tl.load(meta_ptr + 1)
        wscale = tl.load(scale_ptr)
        yv = (s.to(tl.float32) - tl.where(pid_k == 0, xsum, 0.0)) * (xscale * wscale)
        if ATOMIC:
            tl.atomic_add(y_ptr + offs_n, yv, mask=mask_n, sem="relaxed")
        else:
            tl.store(y_ptr + offs_n, yv.to(y_ptr.dtype.element_ty), mask=mask_n)

    @triton.jit
    def _quant_store(y, offs, m, xq_ptr, meta_ptr):
        """Per-token absmax INT8 quantization of y (fp32 [BLOCK], valid where m): codes stored permuted
        within each 16-block (see ternary_a8_kernel); meta = [absmax/127, sum of codes]."""
        amax = tl.maximum(tl.max(tl.where(m, tl.abs(y), 0.0), axis=0), 1e-5)
        q = tl.floor(y * (127.0 / amax) + 0.5)
        q = tl.where(m, tl.minimum(tl.maximum(q, -128.0), 127.0), 0.0)
        dest = (offs // 16) * 16 + (offs % 4) * 4 + (offs % 16) // 4
        tl.store(xq_ptr + dest, q.to(tl.int8), mask=m)
        tl.store(meta_ptr, amax / 127.0)
        tl.store(meta_ptr + 1, tl.sum(q, axis=0))

    @triton.jit
    def act_quant_kernel(x_ptr, xq_ptr, meta_ptr, K, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        m = offs < K
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        _quant_store(x, offs, m, xq_ptr, meta_ptr)

    @triton.jit
    def add_rmsnorm_kernel(h_ptr, d_ptr, w_ptr, out_ptr, N, eps,
                           HAS_ADD: tl.constexpr, BLOCK: tl.constexpr,
                           xq_ptr=None, meta_ptr=None, QUANT: tl.constexpr = False):
        """if HAS_ADD: h += d (stored back).  out = rmsnorm(h) * w.  QUANT: also INT8-quantize out."""
        offs = tl.arange(0, BLOCK)
        m = offs < N
        h = tl.load(h_ptr + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_ADD:
            h = h + tl.load(d_ptr + offs, mask=m, other=0.0).to(tl.float32)
            tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=m)
            h = h.to(h_ptr.dtype.element_ty).to(tl.float32)
        r = tl.rsqrt(tl.sum(h * h, axis=0) / N + eps)
        w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
        y = (h * r).to(out_ptr.dtype.element_ty).to(tl.float32) * w
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)
        if QUANT:
            _quant_store(y.to(out_ptr.dtype.element_ty).to(tl.float32), offs, m, xq_ptr, meta_ptr)

    @triton.jit
    def act_kernel(gu_ptr, w_ptr, out_ptr, F_, eps,
                   ACT: tl.constexpr, SUBNORM: tl.constexpr, BLOCK: tl.constexpr,
                   xq_ptr=None, meta_ptr=None, QUANT: tl.constexpr = False):
        """gu = [gate | up] (2F).  a = act(gate) * up; ACT 0: silu, 1: relu^2.  Optional rmsnorm * w."""
        offs = tl.arange(0, BLOCK)
        m = offs < F_
        g = tl.load(gu_ptr + offs, mask=m, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + F_ + offs, mask=m, other=0.0).to(tl.float32)
        if ACT == 0:
            a = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
        else:
            r = tl.maximum(g, 0.0).to(out_ptr.dtype.element_ty).to(tl.float32)
            a = (r * r).to(out_ptr.dtype.element_ty).to(tl.float32)
        a = (a * u).to(out_ptr.dtype.element_ty).to(tl.float32)
        if SUBNORM:
            rr = tl.rsqrt(tl.sum(a * a, axis=0) / F_ + eps)
            w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
            a = (a * rr).to(out_ptr.dtype.element_ty).to(tl.float32) * w
        tl.store(out_ptr + offs, a.to(out_ptr.dtype.element_ty), mask=m)
        if QUANT:
            _quant_store(a.to(out_ptr.dtype.element_ty).to(tl.float32), offs, m, xq_ptr, meta_ptr)

    @triton.jit
    def rope_kv_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_out_ptr, kc_ptr, vc_ptr,
                       H, HKV, L, D: tl.constexpr):
        """Program p < H: rope(q head p) -> q_out.  H <= p < H+HKV: rope(k head) -> k cache[pos].
        p >= H+HKV: v head -> v cache[pos].  Rotate-half RoPE; cos/sin tables [Lmax, D/2] fp32."""
        p = tl.program_id(0)
        pos = tl.load(pos_ptr)
        half = tl.arange(0, D // 2)
        x1 = tl.load(qkv_ptr + p * D + half).to(tl.float32)
        x2 = tl.load(qkv_ptr + p * D + D // 2 + half).to(tl.float32)
        if p < H + HKV:
            c = tl.load(cos_ptr + pos * (D // 2) + half)
            s = tl.load(sin_ptr + pos * (D // 2) + half)
            y1 = x1 * c - x2 * s
            y2 = x2 * c + x1 * s
            if p < H:
                base = q_out_ptr + p * D
            else:
                base = kc_ptr + ((p - H) * L + pos) * D
        else:
            y1 = x1
            y2 = x2
            base = vc_ptr + ((p - H - HKV) * L + pos) * D
        tl.store(base + half, y1.to(q_out_ptr.dtype.element_ty))
        tl.store(base + D // 2 + half, y2.to(q_out_ptr.dtype.element_ty))


# Candidate launch configurations for the quantized GEMVs (picked per shape by timing).
INT4_CONFIGS = [dict(BLOCK_N=bn, GPB=gpb, num_warps=nw, num_stages=ns)
                for (bn, gpb, nw, ns) in [(8, 2, 4, 3), (16, 1, 4, 4), (16, 2, 4, 3), (16, 4, 8, 2),
                                          (32, 1, 4, 3), (32, 2, 8, 3), (32, 4, 8, 2), (64, 1, 8, 3),
                                          (64, 2, 8, 2)]]
TERN_CONFIGS = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=ns)
                for (bn, bk, nw, ns) in [(8, 512, 4, 3), (16, 256, 4, 4), (16, 512, 4, 3),
                                         (16, 1024, 8, 2), (32, 256, 4, 3), (32, 512, 8, 3),
                                         (64, 256, 8, 3), (64, 512, 8, 2), (128, 256, 8, 2)]]
INT4_CONFIGS += [dict(v=2, BLOCK_N=bn, GPB=gpb, num_warps=nw, num_stages=ns)
                 for (bn, gpb, nw, ns) in [(16, 1, 4, 4), (32, 1, 4, 4), (64, 1, 4, 3), (128, 1, 8, 3),
                                           (16, 2, 4, 3), (32, 2, 4, 3), (64, 2, 8, 3), (16, 4, 4, 3)]]
TERN_CONFIGS += [dict(v=2, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=ns)
                 for (bn, bk, nw, ns) in [(16, 256, 4, 4), (32, 256, 4, 4), (64, 256, 4, 3), (128, 256, 8, 3),
                                          (16, 512, 4, 3), (32, 512, 4, 3), (64, 512, 8, 3), (16, 1024, 4, 3)]]
# v3 / a8 (split-K) candidates: (BLOCK_N, GPB or BW, num_warps) x SPLIT_K; split-K configs whose grid
# would exceed 16 programs per SM, or whose K slice is under one tile, are dropped per shape.
SPLITS = (1, 2, 4, 8, 16)
INT4_V3 = [dict(v=3, BLOCK_N=bn, GPB=g, num_warps=nw, SPLIT_K=sk)
           for (bn, g, nw) in [(4, 2, 4), (8, 1, 4), (8, 2, 4), (16, 1, 4), (16, 2, 8), (32, 1, 8)] for sk in SPLITS]
TERN_V3 = [dict(v=3, BLOCK_N=bn, BW=bw, num_warps=nw, SPLIT_K=sk)
           for (bn, bw, nw) in [(4, 64, 4), (8, 32, 4), (8, 64, 4), (16, 32, 4), (16, 64, 8), (32, 32, 8)] for sk in SPLITS]
TERN_A8 = [dict(v="a8", BLOCK_N=bn, BW=bw, num_warps=nw, SPLIT_K=sk)
           for (bn, bw, nw) in [(4, 64, 4), (4, 128, 4), (8, 64, 4), (8, 128, 4), (16, 64, 4), (16, 128, 4),
                                (16, 128, 8), (32, 64, 8)] for sk in SPLITS]
TINY_INT4_V3 = [dict(v=3, BLOCK_N=8, GPB=1, num_warps=4, SPLIT_K=1), dict(v=3, BLOCK_N=16, GPB=2, num_warps=4, SPLIT_K=2),
                dict(v=3, BLOCK_N=4, GPB=1, num_warps=4, SPLIT_K=3)]
TINY_TERN_V3 = [dict(v=3, BLOCK_N=8, BW=8, num_warps=4, SPLIT_K=1), dict(v=3, BLOCK_N=16, BW=4, num_warps=4, SPLIT_K=3)]
TINY_TERN_A8 = [dict(v="a8", BLOCK_N=8, BW=8, num_warps=4, SPLIT_K=1), dict(v="a8", BLOCK_N=16, BW=4, num_warps=4, SPLIT_K=3)]
TINY_INT4 = [dict(v=2, BLOCK_N=16, GPB=1, num_warps=4, num_stages=2), dict(v=2, BLOCK_N=8, GPB=4, num_warps=4, num_stages=2),
             dict(BLOCK_N=16, GPB=2, num_warps=4, num_stages=2), dict(BLOCK_N=8, GPB=1, num_warps=4, num_stages=2)]
TINY_TERN = [dict(v=2, BLOCK_N=16, BLOCK_K=128, num_warps=4, num_stages=2), dict(v=2, BLOCK_N=8, BLOCK_K=512, num_warps=4, num_stages=2),
             dict(BLOCK_N=16, BLOCK_K=128, num_warps=4, num_stages=2), dict(BLOCK_N=8, BLOCK_K=256, num_warps=4, num_stages=2)]


# ----------------------------------------------------------------------------------------------
# Weight formats
# ----------------------------------------------------------------------------------------------
def _to_int32(v64):
    v64 = v64 & 0xFFFFFFFF
    return torch.where(v64 >= 2 ** 31, v64 - 2 ** 32, v64).to(torch.int32)


def rand_int32(shape, dev, gen):
    lo = torch.randint(0, 2 ** 16, shape, device=dev, dtype=torch.int64, generator=gen)
    hi = torch.randint(0, 2 ** 16, shape, device=dev, dtype=torch.int64, generator=gen)
    return _to_int32(lo | (hi << 16))


def unpack_nibbles(w32, axis_len):
    """int32 [..., M] -> int64 [..., 8M], nibble j of word m -> index 8m+j."""
    sh = torch.arange(0, 32, 4, device=w32.device, dtype=torch.int64)
    v = (w32.to(torch.int64).unsqueeze(-1) >> sh) & 0xF
    return v.reshape(*w32.shape[:-1], w32.shape[-1] * 8)[..., :axis_len]


class Int4Weight:
    """W[n,k] = (q[n,k] - z[k//128, n]) * s[k//128, n]; qweight int32 [N, K/8] (packed along K, the
    GPTQ packing, stored N-major for a coalesced GEMV), scales fp16 [K/128, N], qzeros int32 [K/128, N/8]."""

    def __init__(self, N, K, dev, gen):
        assert K % GROUP == 0 and N % 8 == 0
        self.N, self.K = N, K
        ng = K // GROUP
        self.qweight = rand_int32((N, K // 8), dev, gen)
        self.qzeros = rand_int32((ng, N // 8), dev, gen)
        # (q - z) has std ~6.3; keep outputs O(1) for unit-variance inputs.
        self.scales = (torch.rand((ng, N), device=dev, generator=gen) * 0.5 + 0.75).div_(
            6.3 * math.sqrt(K)).to(torch.float16)
        self.cfg = None

    def nbytes(self):
        return self.qweight.numel() * 4 + self.qzeros.numel() * 4 + self.scales.numel() * 2

    def dequant(self, dtype=torch.bfloat16):
        q = unpack_nibbles(self.qweight, self.K)                       # [N, K]
        z = unpack_nibbles(self.qzeros, self.N).t()                    # [N, NG]
        s = self.scales.t().float()                                     # [N, NG]
        w = (q.float().view(self.N, -1, GROUP) - z.float().unsqueeze(-1)) * s.unsqueeze(-1)
        return w.view(self.N, self.K).to(dtype)

    def launch(self, x, cfg=None, out=None, xq=None):
        """y = x @ W^T.  v1/v2: one program per BLOCK_N rows, bf16 y.  v3: grid (N/BLOCK_N, SPLIT_K);
        with SPLIT_K > 1 the slices are atomically added into an fp32 y that must start at zero
        (out: a slice of the step's workspace, zeroed once per step; if None a zeroed buffer)."""
        cfg = cfg or self.cfg
        if cfg.get("v", 1) == 3:
            sk = cfg["SPLIT_K"]
            y = out if out is not None else _new_out(self.N, x, sk)
            w4a16_gemv_v3_kernel[(triton.cdiv(self.N, cfg["BLOCK_N"]), sk)](
                x, self.qweight, self.scales, self.qzeros, y, self.N, self.K, sk,
                BLOCK_N=cfg["BLOCK_N"], GPB=cfg["GPB"], ATOMIC=sk > 1, num_warps=cfg["num_warps"])
            return y
        y = torch.empty((1, self.N), device=x.device, dtype=x.dtype) if out is None else out
        grid = (triton.cdiv(self.N, cfg["BLOCK_N"]),)
        kern = w4a16_gemv_v2_kernel if cfg.get("v", 1) == 2 else w4a16_gemv_kernel
        kern[grid](x, self.qweight, self.scales, self.qzeros, y, self.N, self.K,
                                BLOCK_N=cfg["BLOCK_N"], GPB=cfg["GPB"],
                                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return y


def _new_out(N, x, split):
    if split > 1:
        return torch.zeros((1, N), device=x.device, dtype=torch.float32)
    return torch.empty((1, N), device=x.device, dtype=x.dtype)


def quantize_act(x):
    """INT8 per-token absmax quantization in Triton: (xq int8 [K] permuted per 16-block, meta fp32 [2])."""
    K = x.numel()
    xq = torch.empty(K, device=x.device, dtype=torch.int8)
    meta = torch.empty(2, device=x.device, dtype=torch.float32)
    act_quant_kernel[(1,)](x, xq, meta, K, BLOCK=_np2(K), num_warps=4 if K < 4096 else 8)
    return xq, meta


def fake_quant_torch(x):
    """Torch reference of the INT8 activation quantization, returned dequantized (same dtype)."""
    xf = x.float()
    amax = xf.abs().max().clamp_min(1e-5)
    q = torch.floor(xf * (127.0 / amax) + 0.5).clamp(-128, 127)
    return (q * (amax / 127.0)).to(x.dtype)


class TernaryWeight:
    """W[n,k] = (c[n,k] - 1) * gamma; codes c in {0,1,2}, 2 bits, int32 [N, K/16] packed along K."""

    def __init__(self, N, K, dev, gen):
        assert K % 16 == 0
        self.N, self.K = N, K
        codes = torch.randint(0, 3, (N, K // 16, 16), device=dev, dtype=torch.int64, generator=gen)
        sh = torch.arange(0, 32, 2, device=dev, dtype=torch.int64)
        self.packed = _to_int32((codes << sh).sum(-1))
        del codes
        self.scale = torch.tensor([1.0 / math.sqrt(K * 2.0 / 3.0)], device=dev, dtype=torch.float32)
        self.cfg = None

    def nbytes(self):
        return self.packed.numel() * 4 + 4

    def dequant(self, dtype=torch.bfloat16):
        sh = torch.arange(0, 32, 2, device=self.packed.device, dtype=torch.int64)
        c = (self.packed.to(torch.int64).unsqueeze(-1) >> sh) & 3
        return ((c.reshape(self.N, self.K).float() - 1.0) * self.scale).to(dtype)

    def launch(self, x, cfg=None, out=None, xq=None):
        """v1/v2: bf16 activations, one program per BLOCK_N rows.  v3: split-K (see Int4Weight.launch).
        a8: INT8 activations (xq = (codes, meta) from the glue kernels; if None, x is quantized here)."""
        cfg = cfg or self.cfg
        v = cfg.get("v", 1)
        if v in (3, "a8"):
            sk = cfg["SPLIT_K"]
            y = out if out is not None else _new_out(self.N, x, sk)
            grid = (triton.cdiv(self.N, cfg["BLOCK_N"]), sk)
            if v == 3:
                ternary_gemv_v3_kernel[grid](x, self.packed, self.scale, y, self.N, self.K, sk,
                                             BLOCK_N=cfg["BLOCK_N"], BW=cfg["BW"], ATOMIC=sk > 1,
                                             num_warps=cfg["num_warps"])
            else:
                q, meta = xq if xq is not None else quantize_act(x)
                ternary_a8_kernel[grid](q.view(torch.int32), meta, self.packed, self.scale, y, self.N, self.K, sk,
                                        BLOCK_N=cfg["BLOCK_N"], BW=cfg["BW"], ATOMIC=sk > 1, USE_ASM=USE_ASM,
                                        num_warps=cfg["num_warps"])
            return y
        y = torch.empty((1, self.N), device=x.device, dtype=x.dtype) if out is None else out
        grid = (triton.cdiv(self.N, cfg["BLOCK_N"]),)
        kern = ternary_gemv_v2_kernel if v == 2 else ternary_gemv_kernel
        kern[grid](x, self.packed, self.scale, y, self.N, self.K,
                                  BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
                                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return y


class Bf16Weight:
    def __init__(self, N, K, dev, gen, w=None):
        self.N, self.K = N, K
        if w is None:
            w = (torch.randn((N, K), device=dev, generator=gen, dtype=torch.float32)
                 .div_(math.sqrt(K)).to(torch.bfloat16))
        self.w = w
        self.aq = False   # reference of an A8 path: fake-quantize the input first

    def nbytes(self):
        return self.w.numel() * self.w.element_size()

    def launch(self, x, cfg=None, out=None, xq=None):
        return F.linear(fake_quant_torch(x) if self.aq else x, self.w)


# ----------------------------------------------------------------------------------------------
# Timing helpers
# ----------------------------------------------------------------------------------------------
def is_cuda(dev):
    return torch.device(dev).type == "cuda"


def time_graph(fn, dev, iters, trials, warmup=10):
    """Capture fn() in a CUDA graph; return (median us per replay, all trial values)."""
    if not is_cuda(dev):
        fn()
        vals = []
        for _ in range(trials):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            vals.append((time.perf_counter() - t0) / iters * 1e6)
        return statistics.median(vals), vals
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    for _ in range(warmup):
        g.replay()
    torch.cuda.synchronize()
    vals = []
    for _ in range(trials):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(iters):
            g.replay()
        e1.record()
        torch.cuda.synchronize()
        vals.append(e0.elapsed_time(e1) * 1e3 / iters)
    del g
    return statistics.median(vals), vals


def rel_err(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item(), ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def shape_configs(wobj, configs, sms):
    """Drop split-K configs that would not help this shape: grid over 16 programs per SM, or a K slice
    shorter than one tile."""
    keep = []
    for cfg in configs:
        sk = cfg.get("SPLIT_K", 1)
        if sk > 1:
            kw = wobj.K // (8 if isinstance(wobj, Int4Weight) else 16)
            bw = cfg["GPB"] * 16 if "GPB" in cfg else cfg["BW"]
            if math.ceil(wobj.N / cfg["BLOCK_N"]) * sk > 16 * sms or kw / sk < bw:
                continue
        keep.append(cfg)
    return keep


def check_and_tune(wobj, configs, dev, gen, tol, log, tune_iters):
    """Verify every config against a torch fp32 reference of the dequantized weight (for the A8 kernel:
    times the torch-quantized-and-dequantized activations); a failed check is fatal.  Time each on a
    set of weight copies that exceeds L2 (weights re-read from HBM); keep the fastest."""
    ref_w = wobj.dequant(torch.float32)
    best = None
    results = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count if is_cuda(dev) else 132
    for cfg in shape_configs(wobj, configs, sms):
        x = torch.randn((1, wobj.K), device=dev, generator=gen).to(torch.bfloat16)
        a8 = cfg.get("v") == "a8"
        ref = (fake_quant_torch(x) if a8 else x).float() @ ref_w.t()
        try:
            y = wobj.launch(x, cfg)
        except Exception as e:  # a config that fails to compile is skipped
            log(f"    cfg {cfg} failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        l2e, maxe = rel_err(y, ref)
        ok = l2e < tol and math.isfinite(l2e)
        if not ok:
            raise AssertionError(f"{type(wobj).__name__} N={wobj.N} K={wobj.K} cfg={cfg}: rel err {l2e:.3e} (max {maxe:.3e})")
        r = dict(cfg=cfg, rel_l2_err=l2e, rel_max_err=maxe)
        if a8:  # information: INT8 activation error against the bf16-activation product
            r["rel_l2_err_vs_bf16_act"] = rel_err(y, x.float() @ ref_w.t())[0]
        t = None
        if is_cuda(dev):
            t = gemv_rotating_time(wobj, cfg, dev, gen, tune_iters)
        r["us"] = t
        results.append(r)
        if best is None or (t is not None and t < best[1]):
            best = (cfg, t)
    if best is None:
        raise RuntimeError(f"no config ran for {type(wobj).__name__} N={wobj.N} K={wobj.K}")
    wobj.cfg = best[0]
    return results


_ROT_CACHE = {}


def gemv_rotating_time(wobj, cfg, dev, gen, iters, min_bytes=512 << 20):
    """us per GEMV call; calls rotate over copies of the weight totalling >= min_bytes so that
    L2 (50 MB) does not serve the weights.  Graph of n_copies calls, replayed.  Split-K configs
    accumulate into one fp32 workspace zeroed once per replay (one memset, as in the decode step);
    the A8 kernel reads activations quantized once outside the graph (in the step the quantization
    is fused into the preceding glue kernel)."""
    key = (type(wobj).__name__, wobj.N, wobj.K)
    if key not in _ROT_CACHE:
        n = max(2, math.ceil(min_bytes / wobj.nbytes()))
        copies = [wobj] + [type(wobj)(wobj.N, wobj.K, dev, gen) for _ in range(n - 1)]
        _ROT_CACHE.clear()
        _ROT_CACHE[key] = copies
    copies = _ROT_CACHE[key]
    x = torch.randn((1, wobj.K), device=dev, generator=gen).to(torch.bfloat16)
    xq = quantize_act(x) if (cfg is not None and cfg.get("v") == "a8") else None
    split = cfg is not None and cfg.get("SPLIT_K", 1) > 1
    ws = torch.zeros((len(copies), wobj.N), device=dev, dtype=torch.float32) if split else None

    def fn():
        if split:
            ws.zero_()
        for i, c in enumerate(copies):
            c.launch(x, cfg, out=ws[i:i + 1] if split else None, xq=xq)
    med, _ = time_graph(fn, dev, iters=iters, trials=3, warmup=3)
    return med / len(copies)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
class Model:
    def __init__(self, cfg, fmt, dev, gen, lin_cfgs=None):
        """fmt: 'bf16' | 'int4' | 'ternary'."""
        self.c = c = cfg
        self.fmt = fmt
        self.dev = dev
        H, Hkv, D, hid, ffn = c["heads"], c["kv_heads"], c["head_dim"], c["hidden"], c["ffn"]
        cls = {"bf16": Bf16Weight, "int4": Int4Weight, "ternary": TernaryWeight}[fmt]
        self.layers = []
        for _ in range(c["layers"]):
            L = dict(
                qkv=cls((H + 2 * Hkv) * D, hid, dev, gen),
                o=cls(hid, H * D, dev, gen),
                gate_up=cls(2 * ffn, hid, dev, gen),
                down=cls(hid, ffn, dev, gen),
                ln1=(1 + 0.1 * torch.randn(hid, device=dev, generator=gen)).to(torch.bfloat16),
                ln2=(1 + 0.1 * torch.randn(hid, device=dev, generator=gen)).to(torch.bfloat16),
            )
            if c["subnorm"]:
                L["attn_sub"] = (1 + 0.1 * torch.randn(H * D, device=dev, generator=gen)).to(torch.bfloat16)
                L["ffn_sub"] = (1 + 0.1 * torch.randn(ffn, device=dev, generator=gen)).to(torch.bfloat16)
            self.layers.append(L)
        self.emb = torch.randn((c["vocab"], hid), device=dev, generator=gen).to(torch.bfloat16)
        self.lm_head = self.emb if c["tied"] else (
            torch.randn((c["vocab"], hid), device=dev, generator=gen).div_(math.sqrt(hid)).to(torch.bfloat16))
        self.lm_scale = 1.0 / math.sqrt(hid) if c["tied"] else 1.0
        self.final_norm = (1 + 0.1 * torch.randn(hid, device=dev, generator=gen)).to(torch.bfloat16)
        self.ws = None    # fp32 workspace for all GEMV outputs of one step (quantized paths)
        self.aq = False   # GEMV inputs INT8-quantized by the glue kernels (ternary_a8)
        if lin_cfgs:
            for L in self.layers:
                for name in ("qkv", "o", "gate_up", "down"):
                    L[name].cfg = lin_cfgs.get((L[name].N, L[name].K))

    def linears(self):
        for L in self.layers:
            for name in ("qkv", "o", "gate_up", "down"):
                yield L[name]

    def use_cfgs(self, tuned):
        """Set each linear's tuned config; one fp32 output workspace (slices per linear, zeroed once per
        step) when the kernels write fp32 (v3 / a8), none for v1/v2."""
        for w in self.linears():
            w.cfg = tuned[(w.N, w.K)]
        self.aq = any(w.cfg.get("v") == "a8" for w in self.linears())
        if any(w.cfg.get("v") in (3, "a8") for w in self.linears()):
            tot = sum(w.N for w in self.linears())
            self.ws = torch.zeros(tot, device=self.dev, dtype=torch.float32)
            off = 0
            for w in self.linears():
                w.out = self.ws[off:off + w.N].view(1, w.N)
                off += w.N
        else:
            self.ws = None
            for w in self.linears():
                w.out = None

    def dequantized_copy(self, aq=False):
        """A bf16 model with the same (dequantized) weights, norms, embedding and head (aq: its linears
        fake-quantize their inputs to INT8 first, the reference of the A8 path)."""
        m = Model.__new__(Model)
        m.c, m.fmt, m.dev = self.c, "bf16", self.dev
        m.ws, m.aq = None, False
        m.layers = []
        for L in self.layers:
            M = dict(L)
            for name in ("qkv", "o", "gate_up", "down"):
                M[name] = Bf16Weight(L[name].N, L[name].K, None, None, w=L[name].dequant(torch.bfloat16))
                M[name].aq = aq
            m.layers.append(M)
        m.emb, m.lm_head, m.lm_scale, m.final_norm = self.emb, self.lm_head, self.lm_scale, self.final_norm
        return m

    def bytes_per_token(self, ctx):
        c = self.c
        lin = sum(w.nbytes() for w in self.linears())
        norms = sum(t.numel() * 2 for L in self.layers for k, t in L.items()
                    if k in ("ln1", "ln2", "attn_sub", "ffn_sub")) + self.final_norm.numel() * 2
        emb_row = c["hidden"] * 2
        head = self.lm_head.numel() * 2
        kv = c["layers"] * 2 * c["kv_heads"] * ctx * c["head_dim"] * 2
        return dict(linear_weights=lin, norm_weights=norms, embedding_row=emb_row, lm_head=head,
                    kv_cache=kv, total=lin + norms + emb_row + head + kv)


class State:
    """Static decode state for one context length: KV caches (bf16) holding ctx tokens, the
    current token at position ctx-1 (attention spans all ctx positions)."""

    def __init__(self, model, ctx, dev, gen):
        c = model.c
        self.ctx = ctx
        Hkv, D = c["kv_heads"], c["head_dim"]
        self.kc = [torch.randn((Hkv, ctx, D), device=dev, generator=gen).to(torch.bfloat16) for _ in range(c["layers"])]
        self.vc = [torch.randn((Hkv, ctx, D), device=dev, generator=gen).to(torch.bfloat16) for _ in range(c["layers"])]
        self.tok = torch.randint(0, c["vocab"], (1,), device=dev, generator=gen)
        self.pos = torch.tensor([ctx - 1], device=dev, dtype=torch.int64)
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))
        ang = torch.arange(ctx, device=dev, dtype=torch.float32)[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos().contiguous(), ang.sin().contiguous()


def rope_torch(x, cos, sin):  # x [heads, D]; cos/sin [1, D/2]
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


def step_torch(m, st):
    """One decode step, plain PyTorch ops only (linears through m's weight objects)."""
    c = m.c
    H, Hkv, D, eps = c["heads"], c["kv_heads"], c["head_dim"], 1e-5
    h = m.emb.index_select(0, st.tok)                      # [1, hid]
    cos, sin = st.cos.index_select(0, st.pos), st.sin.index_select(0, st.pos)
    for li, L in enumerate(m.layers):
        x = F.rms_norm(h, (c["hidden"],), L["ln1"], eps)
        qkv = L["qkv"].launch(x).to(x.dtype)
        q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], -1)
        q = rope_torch(q.view(H, D), cos, sin)
        k = rope_torch(k.view(Hkv, D), cos, sin)
        st.kc[li].index_copy_(1, st.pos, k.view(Hkv, 1, D))
        st.vc[li].index_copy_(1, st.pos, v.reshape(Hkv, 1, D))
        o = F.scaled_dot_product_attention(q.view(1, H, 1, D), st.kc[li].unsqueeze(0), st.vc[li].unsqueeze(0),
                                           enable_gqa=(H != Hkv))
        o = o.reshape(1, H * D)
        if c["subnorm"]:
            o = F.rms_norm(o, (H * D,), L["attn_sub"], eps)
        h = h + L["o"].launch(o).to(h.dtype)
        x = F.rms_norm(h, (c["hidden"],), L["ln2"], eps)
        gu = L["gate_up"].launch(x).to(x.dtype)
        g, u = gu.chunk(2, -1)
        a = (F.silu(g) if c["act"] == "silu" else torch.square(F.relu(g))) * u
        if c["subnorm"]:
            a = F.rms_norm(a, (c["ffn"],), L["ffn_sub"], eps)
        h = h + L["down"].launch(a).to(h.dtype)
    h = F.rms_norm(h, (c["hidden"],), m.final_norm, eps)
    logits = F.linear(h, m.lm_head)
    return logits * m.lm_scale if m.lm_scale != 1.0 else logits


def _np2(n):
    return 1 << (n - 1).bit_length()


def step_fused(m, st):
    """One decode step: linears through m's weight objects, glue in fused Triton kernels.  Quantized
    v3/a8 paths: GEMV outputs are fp32 slices of one workspace zeroed at the start of the step (one
    memset), read directly by the glue kernels; a8: the glue kernels also emit the INT8 activations."""
    c = m.c
    H, Hkv, D, eps, hid, ffn = c["heads"], c["kv_heads"], c["head_dim"], 1e-5, c["hidden"], c["ffn"]
    dev = st.tok.device
    if m.ws is not None:
        m.ws.zero_()
    aq = m.aq

    def qbuf(K):
        if not aq:
            return None, None, None
        xq = torch.empty(K, device=dev, dtype=torch.int8)
        meta = torch.empty(2, device=dev, dtype=torch.float32)
        return (xq, meta), xq, meta

    def lin(w, inp, xq):
        return w.launch(inp, out=getattr(w, "out", None), xq=xq)

    h = m.emb.index_select(0, st.tok)                      # [1, hid] (a copy: residual stream)
    x = torch.empty_like(h)
    nw_h = 8 if hid >= 2048 else 4
    xqp, xq, meta = qbuf(hid)
    add_rmsnorm_kernel[(1,)](h, h, m.layers[0]["ln1"], x, hid, eps, HAS_ADD=False, BLOCK=_np2(hid), num_warps=nw_h,
                             xq_ptr=xq, meta_ptr=meta, QUANT=aq)
    for li, L in enumerate(m.layers):
        qkv = lin(L["qkv"], x, xqp)
        q = torch.empty((1, H * D), device=dev, dtype=torch.bfloat16)
        rope_kv_kernel[(H + 2 * Hkv,)](qkv, st.cos, st.sin, st.pos, q, st.kc[li], st.vc[li], H, Hkv, st.ctx, D=D,
                                       num_warps=1)
        o = F.scaled_dot_product_attention(q.view(1, H, 1, D), st.kc[li].unsqueeze(0), st.vc[li].unsqueeze(0),
                                           enable_gqa=(H != Hkv))
        o = o.reshape(1, H * D)
        xqp, xq, meta = qbuf(H * D)
        if c["subnorm"]:
            o2 = torch.empty_like(o)
            add_rmsnorm_kernel[(1,)](o, o, L["attn_sub"], o2, H * D, eps, HAS_ADD=False, BLOCK=_np2(H * D),
                                     num_warps=nw_h, xq_ptr=xq, meta_ptr=meta, QUANT=aq)
            o = o2
        elif aq:
            xqp = quantize_act(o)
        d = lin(L["o"], o, xqp)
        xqp, xq, meta = qbuf(hid)
        add_rmsnorm_kernel[(1,)](h, d, L["ln2"], x, hid, eps, HAS_ADD=True, BLOCK=_np2(hid), num_warps=nw_h,
                                 xq_ptr=xq, meta_ptr=meta, QUANT=aq)
        gu = lin(L["gate_up"], x, xqp)
        a = torch.empty((1, ffn), device=dev, dtype=torch.bfloat16)
        xqp, xq, meta = qbuf(ffn)
        act_kernel[(1,)](gu, L["ffn_sub"] if c["subnorm"] else gu, a, ffn, eps,
                         ACT=0 if c["act"] == "silu" else 1, SUBNORM=c["subnorm"], BLOCK=_np2(ffn),
                         num_warps=16 if ffn >= 4096 else 4, xq_ptr=xq, meta_ptr=meta, QUANT=aq)
        d = lin(L["down"], a, xqp)
        nxt = m.layers[li + 1]["ln1"] if li + 1 < len(m.layers) else m.final_norm
        last = li + 1 == len(m.layers)
        xqp, xq, meta = qbuf(hid) if not last else (None, None, None)
        add_rmsnorm_kernel[(1,)](h, d, nxt, x, hid, eps, HAS_ADD=True, BLOCK=_np2(hid), num_warps=nw_h,
                                 xq_ptr=xq, meta_ptr=meta, QUANT=aq and not last)
    logits = F.linear(x, m.lm_head)
    return logits * m.lm_scale if m.lm_scale != 1.0 else logits


def gemv_only_step(m, xs, xqs=None):
    """Only the linear layers + LM head of one step (inputs fixed): the weight-streaming floor
    (quantized v3/a8 paths include the step's one workspace memset; a8 inputs pre-quantized)."""
    if m.ws is not None:
        m.ws.zero_()
    for L in m.layers:
        for name in ("qkv", "o", "gate_up", "down"):
            w = L[name]
            w.launch(xs[w.K], out=getattr(w, "out", None), xq=xqs[w.K] if xqs else None)
    return F.linear(xs[m.c["hidden"]], m.lm_head)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU logic check)")
    ap.add_argument("--quick", action="store_true", help="real widths, 2 layers, short timing (smoke test)")
    ap.add_argument("--models", default="bitnet-2b4t,llama2-7b")
    ap.add_argument("--contexts", default="128,1024")
    ap.add_argument("--iters", type=int, default=100, help="graph replays per trial")
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--kernels-only", action="store_true", help="only the kernel-level GEMV section")
    ap.add_argument("--out", default=None, help="directory for gpu_baseline.json / .md / .log")
    args = ap.parse_args()

    dev = args.device
    cuda = is_cuda(dev)
    if cuda:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "gpu_baseline.log"), "w") if args.out else None

    def log(s):
        print(s, flush=True)
        if logf:
            logf.write(s + "\n")
            logf.flush()

    gen = torch.Generator(device=dev)
    gen.manual_seed(1234)
    contexts = [int(x) for x in args.contexts.split(",")]
    iters, trials = (args.iters, args.trials) if not (args.quick or args.tiny) else (10, 3)
    tune_iters = 5 if (args.quick or args.tiny) else 10
    env = dict(torch=torch.__version__, triton=getattr(triton, "__version__", None) if HAVE_TRITON else None,
               python=platform.python_version(), cuda=torch.version.cuda,
               device=torch.cuda.get_device_name(0) if cuda else str(dev),
               sm_count=torch.cuda.get_device_properties(0).multi_processor_count if cuda else None,
               triton_interpret=os.environ.get("TRITON_INTERPRET"),
               peak_bw_Bps=PEAK_BW, mode="tiny" if args.tiny else ("quick" if args.quick else "full"),
               command=" ".join([os.path.basename(sys.executable)] + sys.argv),
               iters_per_trial=iters, trials=trials)
    log("env: " + json.dumps(env))
    out = dict(env=env, definition=(
        "bytes_per_token = all linear weights at stored precision (incl. scales/zeros) + norm weights + "
        "one embedding row (bf16) + LM head (bf16) + KV cache read for the context (bf16, layers*2*kv_heads*ctx*head_dim*2); "
        "bandwidth = bytes_per_token / token latency; efficiency = bandwidth / 3.35e12 B/s"),
        decode=[], gemv=[], checks=[], tuning={})

    # quantized paths per model: (path name, candidate configs, tiny candidates).  *_v1: the first
    # version's kernels (v1/v2, one program per row block, bf16 activations), kept for comparison;
    # int4 / ternary: the best per shape over the v1/v2 and the split-K v3 kernels (bf16 activations);
    # ternary_a8: the dp4a kernel on INT8 activations.
    VARIANTS = {
        "int4": [("int4_v1", INT4_CONFIGS, TINY_INT4), ("int4", INT4_CONFIGS + INT4_V3, TINY_INT4 + TINY_INT4_V3)],
        "ternary": [("ternary_v1", TERN_CONFIGS, TINY_TERN), ("ternary", TERN_CONFIGS + TERN_V3, TINY_TERN + TINY_TERN_V3),
                    ("ternary_a8", TERN_A8, TINY_TERN_A8)],
    }

    def run_decode(model, mname, path, stepfn):
        for ctx in contexts:
            st = State(model, ctx, dev, gen)
            with torch.no_grad():
                med, vals = time_graph(lambda: stepfn(model, st), dev, iters, trials)
            b = model.bytes_per_token(ctx)
            bw = b["total"] / (med * 1e-6)
            r = dict(model=mname, path=path, context=ctx, layers=model.c["layers"], latency_us=med,
                     trials_us=vals, tokens_per_s=1e6 / med, bytes_per_token=b["total"],
                     bytes_breakdown=b, bandwidth_GBps=bw / 1e9, efficiency=bw / PEAK_BW)
            out["decode"].append(r)
            log(f"  {path:11s} ctx={ctx:5d}: {med:9.1f} us/token  {1e6 / med:8.1f} tok/s  "
                f"{b['total'] / 1e6:9.1f} MB/token  {bw / 1e9:7.1f} GB/s  eff {100 * bw / PEAK_BW:5.1f}%")
            del st
        # weight streaming only (linears + LM head, no glue/attention)
        xs = {k: torch.randn((1, k), device=dev, generator=gen).to(torch.bfloat16)
              for k in {w.K for w in model.linears()} | {model.c["hidden"]}}
        xqs = {k: quantize_act(v) for k, v in xs.items()} if model.aq else None
        with torch.no_grad():
            med, vals = time_graph(lambda: gemv_only_step(model, xs, xqs), dev, iters, trials)
        b = model.bytes_per_token(0)
        wb = b["linear_weights"] + b["lm_head"]
        r = dict(model=mname, path=path, context=None, what="linears+LM head only", latency_us=med,
                 trials_us=vals, bytes=wb, bandwidth_GBps=wb / (med * 1e-6) / 1e9,
                 efficiency=wb / (med * 1e-6) / PEAK_BW)
        out["decode"].append(r)
        log(f"  {path:11s} linears+head only: {med:9.1f} us  {wb / 1e6:9.1f} MB  "
            f"{r['bandwidth_GBps']:7.1f} GB/s  eff {100 * r['efficiency']:5.1f}%")

    for mname in ([m for m in args.models.split(",") if m] if not args.kernels_only else []):
        cfg = dict(MODELS[mname])
        if args.tiny:
            cfg.update(TINY[mname])
        if args.quick:
            cfg["layers"] = 2
        qfmt = cfg["quant"]
        log(f"\n=== {mname} {'(tiny)' if args.tiny else ''} layers={cfg['layers']} quant={qfmt}")
        t0 = time.time()
        qm = Model(cfg, qfmt, dev, gen)
        log(f"  built {qfmt} model in {time.time() - t0:.1f}s")
        dm = qm.dequantized_copy()
        st = State(qm, contexts[0], dev, gen)
        kc0 = [t.clone() for t in st.kc]
        vc0 = [t.clone() for t in st.vc]

        def reset():
            for a_, b_ in zip(st.kc, kc0):
                a_.copy_(b_)
            for a_, b_ in zip(st.vc, vc0):
                a_.copy_(b_)
        with torch.no_grad():
            ref = step_torch(dm, st).float(); reset()
            ref_f = step_fused(dm, st).float(); reset()
        l2e, maxe = rel_err(ref_f, ref)
        ok = math.isfinite(l2e) and l2e < 5e-2
        log(f"  check: bf16 fused-glue step vs bf16 torch step (same weights): logits rel l2 err {l2e:.2e} "
            f"{'ok' if ok else 'FAIL (recorded, run continues)'}")
        out["checks"].append(dict(model=mname, what="bf16 fused-glue step vs bf16 torch step (same weights)",
                                  rel_l2_err=l2e, rel_max_err=maxe, tol=5e-2, passed=ok))
        ref_aq = None
        for path, configs, tiny_configs in VARIANTS[qfmt]:
            # --- verify + tune each kernel shape (fatal on a wrong result), then whole-step sanity
            tuned = {}
            for w in qm.layers[0].values():
                if not hasattr(w, "launch") or (w.N, w.K) in tuned:
                    continue
                res = check_and_tune(w, tiny_configs if args.tiny else configs, dev, gen, tol=1e-2, log=log,
                                     tune_iters=tune_iters)
                tuned[(w.N, w.K)] = w.cfg
                best = min(res, key=lambda r: r["us"] if r["us"] is not None else 0)
                log(f"  {path} GEMV N={w.N} K={w.K}: {len(res)} configs verified (max rel l2 err "
                    f"{max(r['rel_l2_err'] for r in res):.2e}); best {w.cfg} "
                    + (f"{best['us']:.1f} us" if best["us"] is not None else ""))
                out["tuning"][f"{mname}/{path}/N{w.N}_K{w.K}"] = res
                out["checks"].append(dict(model=mname, what=f"{path} GEMV vs torch fp32 matmul of dequantized weights"
                                          + (" x fake-quantized INT8 activations" if path.endswith("a8") else ""),
                                          N=w.N, K=w.K, max_rel_l2_err=max(r["rel_l2_err"] for r in res),
                                          max_rel_max_err=max(r["rel_max_err"] for r in res), tol=1e-2, passed=True))
            _ROT_CACHE.clear()
            qm.use_cfgs(tuned)
            a8 = path.endswith("a8")
            if a8 and ref_aq is None:
                dq = qm.dequantized_copy(aq=True)
                with torch.no_grad():
                    ref_aq = step_torch(dq, st).float(); reset()
                del dq
            with torch.no_grad():
                got_q = step_fused(qm, st).float(); reset()
                got_qt = step_torch(qm, st).float(); reset()
            rname = "bf16 torch step on dequantized weights" + (" with INT8 fake-quantized activations" if a8 else "")
            if not a8:
                checks = [(f"{path} step (fused glue) vs {rname}", got_q, ref, 5e-2),
                          (f"{path} step (torch glue) vs {rname}", got_qt, ref, 5e-2)]
            else:
                # INT8 activations add ~1% noise per GEMV (rel_l2_err_vs_bf16_act in the tuning records), which
                # the random 30-layer network amplifies; two A8 chains that differ by bf16 rounding also round
                # different activations to different codes, so against the fake-quant torch reference the
                # error is of the same size: those two comparisons are recorded as information.  The pass/fail
                # check compares the fused-glue step (quantization fused into the glue kernels) with the
                # torch-glue step that quantizes each GEMV input separately (same kernels).
                checks = [(f"{path} step (fused glue, quantization in the glue kernels) vs {path} step (torch glue, "
                           "separate quantization kernel)", got_q, got_qt, 5e-2),
                          (f"{path} step (fused glue) vs {rname} (information)", got_q, ref_aq, None),
                          (f"{path} step (fused glue) vs bf16 torch step on dequantized weights, bf16 "
                           "activations (information: INT8 activation error)", got_q, ref, None)]
            for what, a_, r_, tol in checks:
                l2e, maxe = rel_err(a_, r_)
                cos = F.cosine_similarity(a_.flatten(), r_.flatten(), dim=0).item()
                ok = math.isfinite(l2e) and (tol is None or l2e < tol)
                log(f"  check: {what}: logits rel l2 err {l2e:.2e} (rel max {maxe:.2e}, cosine {cos:.6f}) "
                    f"{'ok' if ok else 'FAIL (recorded, run continues)'}")
                out["checks"].append(dict(model=mname, what=what, rel_l2_err=l2e, rel_max_err=maxe, cosine=cos,
                                          tol=tol, passed=ok))
            del got_q, got_qt
            run_decode(qm, mname, path, step_fused)
            if cuda:
                torch.cuda.empty_cache()
        del dm, st, kc0, vc0, ref, ref_f, ref_aq, qm
        if cuda:
            torch.cuda.empty_cache()
        bm = Model(cfg, "bf16", dev, gen)
        run_decode(bm, mname, "bf16_torch", step_torch)
        run_decode(bm, mname, "bf16_fused", step_fused)
        del bm
        if cuda:
            torch.cuda.empty_cache()

    # --- kernel-level GEMV bandwidth per weight format at the largest layer shapes
    if cuda or args.tiny:
        hid, ffn = (MODELS["llama2-7b"]["hidden"], MODELS["llama2-7b"]["ffn"]) if not args.tiny else (256, 640)
        bh, bf = (MODELS["bitnet-2b4t"]["hidden"], MODELS["bitnet-2b4t"]["ffn"]) if not args.tiny else (256, 384)
        shapes = [("llama2-7b gate_up (fused)", 2 * ffn, hid), ("llama2-7b down", hid, ffn),
                  ("bitnet-2b4t gate_up (fused)", 2 * bf, bh), ("bitnet-2b4t down", bh, bf)]
        log("\n=== kernel-level GEMV (weights rotated over copies > L2; bf16 x; y bf16, or fp32 for split-K)")
        fmts = [("bf16", Bf16Weight, [None], [None])] + [
            (p, Int4Weight if q == "int4" else TernaryWeight, c, tc) for q in ("int4", "ternary") for p, c, tc in VARIANTS[q]]
        for label, N, K in shapes:
            for fmt, cls, cfgs, tcfgs in fmts:
                if label.startswith("bitnet") and fmt.startswith("int4"):
                    continue
                w = cls(N, K, dev, gen)
                if fmt == "bf16":
                    w.cfg = None
                    us = gemv_rotating_time(w, None, dev, gen, tune_iters) if cuda else float("nan")
                else:
                    res = check_and_tune(w, tcfgs if args.tiny else cfgs, dev, gen, tol=1e-2, log=log,
                                         tune_iters=tune_iters)
                    us = min(r["us"] for r in res) if cuda else float("nan")
                    out["tuning"][f"kernel/{fmt}/N{N}_K{K}"] = res
                bw = w.nbytes() / (us * 1e-6)
                r = dict(shape=label, N=N, K=K, format=fmt, cfg=w.cfg, us=us, bytes=w.nbytes(),
                         bandwidth_GBps=bw / 1e9, efficiency=bw / PEAK_BW)
                out["gemv"].append(r)
                log(f"  {label:28s} {fmt:10s} N={N:6d} K={K:6d}: {us:8.1f} us  {w.nbytes() / 1e6:8.1f} MB  "
                    f"{bw / 1e9:7.1f} GB/s  eff {100 * bw / PEAK_BW:5.1f}%  cfg={w.cfg}")
                _ROT_CACHE.clear()
                del w
                if cuda:
                    torch.cuda.empty_cache()

    md = render_md(out)
    log("\n" + md)
    if args.out:
        with open(os.path.join(args.out, "gpu_baseline.json"), "w") as f:
            json.dump(out, f, indent=1)
        with open(os.path.join(args.out, "gpu_baseline.md"), "w") as f:
            f.write(md)


def _cfgstr(cfg):
    return "" if not cfg else " ".join(f"{k}={v}" for k, v in cfg.items())


def render_md(out):
    e = out["env"]
    lines = [f"# GPU decode baseline ({e['mode']} run)", "",
             f"Device: {e['device']} ({e['sm_count']} SMs); torch {e['torch']}, triton {e['triton']}, CUDA {e['cuda']}. "
             f"Command: `{e['command']}`. Timing: one decode step captured in a CUDA graph, "
             f"{e['iters_per_trial']} replays per trial, median of {e['trials']} trials (CUDA events).", "",
             "Efficiency = bytes per token at stored precision / token latency / 3.35e12 B/s.", "",
             "## Decode, batch 1", "",
             "| model | path | context | latency (us) | tokens/s | MB/token | GB/s | efficiency |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in out["decode"]:
        if r.get("context") is None:
            continue
        lines.append(f"| {r['model']} | {r['path']} | {r['context']} | {r['latency_us']:.1f} | {r['tokens_per_s']:.1f} | "
                     f"{r['bytes_per_token'] / 1e6:.1f} | {r['bandwidth_GBps']:.1f} | {100 * r['efficiency']:.1f}% |")
    lines += ["", "## Weight streaming only (all linear layers + LM head of one step, no glue, no attention)", "",
              "| model | path | latency (us) | MB | GB/s | efficiency |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in out["decode"]:
        if r.get("context") is None:
            lines.append(f"| {r['model']} | {r['path']} | {r['latency_us']:.1f} | {r['bytes'] / 1e6:.1f} | "
                         f"{r['bandwidth_GBps']:.1f} | {100 * r['efficiency']:.1f}% |")
    if out["gemv"]:
        lines += ["", "## Kernel-level GEMV (batch 1, weights rotated over copies larger than L2)", "",
                  "| shape | format | N | K | us | MB | GB/s | efficiency | config |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in out["gemv"]:
            lines.append(f"| {r['shape']} | {r['format']} | {r['N']} | {r['K']} | {r['us']:.1f} | {r['bytes'] / 1e6:.1f} | "
                         f"{r['bandwidth_GBps']:.1f} | {100 * r['efficiency']:.1f}% | {_cfgstr(r['cfg'])} |")
    lines += ["", "## Checks", ""]
    for c in out["checks"]:
        err = c.get("rel_l2_err", c.get("max_rel_l2_err"))
        lines.append(f"- {c['model']}: {c['what']}" + (f" (N={c['N']}, K={c['K']})" if "N" in c else "")
                     + (f": rel L2 err {err:.2e} < {c['tol']}: {'pass' if c['passed'] else 'FAIL'}" if c["tol"] is not None
                        else f": rel L2 err {err:.2e} (information, no tolerance)")
                     + (f" (cosine {c['cosine']:.5f})" if "cosine" in c else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
