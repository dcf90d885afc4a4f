"""cocotb testbench for the NPE units in Verilator (real shapes, random gaps and stalls).

:class:`NpeBench` wraps one instance of each composite NPE unit into a single top module (one
Verilator build serves every test); each cocotb test drives one unit's streams with random valid
gaps and ready stalls and compares every output bit pattern with the golden model, computed in
the same Python process. Parameters (``TERNOPU_TB_PARAMS``): ``seed``, ``gap_p``, ``stall_p``.
"""

from __future__ import annotations

import random

import cocotb
import torch
from amaranth import Module, Shape
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from ternopu.sim.runner import tb_params

SOFTMAX_CHUNK = 64
"""Chunk size of the bench's softmax unit (the golden default)."""


# ----------------------------------------------------------------------------------------------
# the top module
# ----------------------------------------------------------------------------------------------
BENCH_GROUPS = {
    "elt": ("exp", "swiglu", "r2g", "rope", "fp16"),
    "norm": ("rms", "q"),
    "sm": ("sm",),
}
"""Unit groups, one Verilator build each (smaller builds compile faster and cache separately)."""


def _units(group: str):
    from ternopu.hw import npe
    make = {
        "exp": lambda: npe.ExpUnit(), "swiglu": lambda: npe.ActUnit("swiglu"),
        "r2g": lambda: npe.ActUnit("relu2_glu"), "rope": lambda: npe.RopeUnit(),
        "fp16": lambda: npe.ToFp16(), "rms": lambda: npe.RMSNorm(), "q": lambda: npe.ActQuant(),
        "sm": lambda: npe.OnlineSoftmaxUnit(SOFTMAX_CHUNK),
    }
    return {name: make[name]() for name in BENCH_GROUPS[group]}


class NpeBench(wiring.Component):
    """The NPE units of ``group`` side by side; port ``<unit>_<port>`` is the unit's ``<port>``.

    SiLU is tested through the SwiGLU unit with ``up = 1.0`` (``silu(x) * 1.0`` is exact).
    """

    def __init__(self, group: str):
        self._u = _units(group)
        members = {}
        for uname, unit in self._u.items():
            for pname, member in unit.signature.members.items():
                members[f"{uname}_{pname}"] = member
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for uname, unit in self._u.items():
            m.submodules[uname] = unit
            for pname, member in unit.signature.members.items():
                outer = getattr(self, f"{uname}_{pname}")
                inner = getattr(unit, pname)
                if member.is_port:
                    if member.flow == In:
                        m.d.comb += inner.eq(outer)
                    else:
                        m.d.comb += outer.eq(inner)
                elif member.flow == In:
                    wiring.connect(m, wiring.flipped(outer), inner)
                else:
                    wiring.connect(m, inner, wiring.flipped(outer))
        return m


def bench_layouts(group: str):
    """{port name: payload StructLayout} of every stream of the bench."""
    out = {}
    for uname, unit in _units(group).items():
        for pname, member in unit.signature.members.items():
            if not member.is_port:
                out[f"{uname}_{pname}"] = member.signature.members["payload"].shape
    return out


# ----------------------------------------------------------------------------------------------
# stream driving
# ----------------------------------------------------------------------------------------------
def pack(layout, fields: dict) -> int:
    v = 0
    for name, val in fields.items():
        f = layout[name]
        w = f.width
        v |= (int(val) & ((1 << w) - 1)) << f.offset
    return v


def unpack(layout, v: int) -> dict:
    out = {}
    for name, f in layout:
        x = (v >> f.offset) & ((1 << f.width) - 1)
        if Shape.cast(f.shape).signed and x >> (f.width - 1):
            x -= 1 << f.width
        out[name] = x
    return out


class TB:
    def __init__(self, dut):
        self.dut = dut
        self.p = tb_params()
        self.rng = random.Random(self.p.get("seed", 1))
        self.gap_p = self.p.get("gap_p", 0.2)
        self.stall_p = self.p.get("stall_p", 0.2)
        self.layouts = bench_layouts(self.p["group"])
        cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())

    async def reset(self):
        d = self.dut
        d.rst.value = 1
        for name in self.layouts:
            if name.endswith(("_i", "_sq", "_x", "_obs", "_s", "_p_in")):
                getattr(d, f"{name}__valid").value = 0
            else:
                getattr(d, f"{name}__ready").value = 0
        await ClockCycles(d.clk, 3)
        d.rst.value = 0
        await RisingEdge(d.clk)

    async def send(self, port: str, items: list[dict], gap_p: float | None = None):
        d, lay = self.dut, self.layouts[port]
        gap = self.gap_p if gap_p is None else gap_p
        valid, payload, ready = (getattr(d, f"{port}__{s}") for s in ("valid", "payload", "ready"))
        for it in items:
            while self.rng.random() < gap:
                valid.value = 0
                await RisingEdge(d.clk)
            valid.value = 1
            payload.value = pack(lay, it)
            await RisingEdge(d.clk)
            while not ready.value:
                await RisingEdge(d.clk)
        valid.value = 0

    async def recv(self, port: str, n: int, stall_p: float | None = None) -> list[dict]:
        d, lay = self.dut, self.layouts[port]
        stall = self.stall_p if stall_p is None else stall_p
        valid, payload, ready = (getattr(d, f"{port}__{s}") for s in ("valid", "payload", "ready"))
        got = []
        while len(got) < n:
            ready.value = int(self.rng.random() >= stall)
            await RisingEdge(d.clk)
            if valid.value and ready.value:
                got.append(unpack(lay, int(payload.value)))
        ready.value = 0
        return got

    async def run(self, sources: dict, sink: str, n: int) -> list[dict]:
        rx = cocotb.start_soon(self.recv(sink, n))
        txs = [cocotb.start_soon(self.send(port, items)) for port, items in sources.items()]
        for t in txs:
            await t
        return await rx


def bits(t: torch.Tensor) -> list[int]:
    return (t.to(torch.float32).contiguous().view(torch.int32).to(torch.int64).reshape(-1)
            & 0xFFFFFFFF).tolist()


def rows_items(rows, fields_fn):
    items = []
    for r in rows:
        n = len(r)
        for j in range(n):
            items.append(dict(fields_fn(r, j), last=int(j == n - 1)))
    return items


def first_mismatch(got, exp):
    for k, (a, b) in enumerate(zip(got, exp)):
        if a != b:
            return f"element {k}: got {a:#x} expected {b:#x}"
    return f"length {len(got)} vs {len(exp)}" if len(got) != len(exp) else None


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------
def _fp16_all_finite() -> torch.Tensor:
    h = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    return h[torch.isfinite(h)].to(torch.float32)


@cocotb.test()
async def exp_all_fp16(dut):
    """All finite FP16 inputs through exp (those above 88 must raise err)."""
    from ternopu.golden import nonlinear as gn
    tb = TB(dut)
    await tb.reset()
    x = _fp16_all_finite()
    got = await tb.run({"exp_i": [{"x": b, "last": 0} for b in bits(x)]}, "exp_o", x.numel())
    ok = x <= gn.EXP_MAX_INPUT
    exp = bits(gn._exp_core(x))
    errs = [g["err"] for g in got]
    assert errs == (~ok).int().tolist()
    ys = [g["y"] for k, g in enumerate(got) if ok[k]]
    assert ys == [e for k, e in enumerate(exp) if ok[k]], first_mismatch(ys, exp)


@cocotb.test()
async def silu_all_fp16(dut):
    """All finite FP16 inputs through silu (the SwiGLU unit with up = 1.0), bit for bit."""
    from ternopu.golden import nonlinear as gn
    tb = TB(dut)
    await tb.reset()
    x = _fp16_all_finite()
    one = bits(torch.tensor(1.0))[0]
    got = await tb.run({"swiglu_i": [{"a": b, "b": one, "last": 0} for b in bits(x)]},
                       "swiglu_o", x.numel())
    ys, exp = [g["y"] for g in got], bits(gn.silu(x))
    assert ys == exp, first_mismatch(ys, exp)
    assert not any(g["err"] for g in got)


async def _glu(dut, port, golden, n):
    tb = TB(dut)
    await tb.reset()
    g = torch.Generator().manual_seed(tb.p.get("seed", 1))
    gate = (torch.randn(n, generator=g) * 3).float()
    up = (torch.randn(n, generator=g) * 2).float()
    gate[:4] = torch.tensor([0.0, -0.0, -90.0, 1e-40])
    items = [{"a": a, "b": b, "last": int(k == n - 1)} for k, (a, b) in enumerate(zip(bits(gate), bits(up)))]
    got = await tb.run({f"{port}_i": items}, f"{port}_o", n)
    ys, exp = [x["y"] for x in got], bits(golden(gate, up))
    assert ys == exp, first_mismatch(ys, exp)
    assert not any(x["err"] for x in got) and got[-1]["last"] == 1


@cocotb.test()
async def swiglu_llama_ffn(dut):
    """SwiGLU over Llama-2-7B's FFN width (11008)."""
    from ternopu.golden import nonlinear as gn
    await _glu(dut, "swiglu", gn.swiglu, 11008)


@cocotb.test()
async def relu2_glu_bitnet_ffn(dut):
    """ReLU^2-GLU over BitNet 2B4T's FFN width (6912)."""
    from ternopu.golden import nonlinear as gn
    await _glu(dut, "r2g", gn.relu2_glu, 6912)


@cocotb.test()
async def rmsnorm_real_rows(dut):
    """RMSNorm over D = 2560 (BitNet) and D = 4096 (Llama-2), two rows each, in flight together."""
    from ternopu.golden import nonlinear as gn
    tb = TB(dut)
    await tb.reset()
    g = torch.Generator().manual_seed(tb.p.get("seed", 1))
    eps = 1e-5 if tb.p.get("d", 2560) == 2560 else 1e-6
    d = tb.p.get("d", 2560)
    rows = [(torch.randn(d, generator=g) * s).float() for s in (1.0, 30.0)]
    w = (1 + 0.1 * torch.randn(d, generator=g)).float()
    dut.rms_inv_d.value = bits(gn._c(1.0 / d))[0]
    dut.rms_eps.value = bits(gn._c(eps))[0]
    sq = rows_items([bits(r) for r in rows], lambda r, j: {"x": r[j]})
    wb = bits(w)
    xs = rows_items([bits(r) for r in rows], lambda r, j: {"x": r[j], "w": wb[j]})
    got = await tb.run({"rms_sq": sq, "rms_x": xs}, "rms_o", len(xs))
    ys = [x["y"] for x in got]
    exp = bits(torch.stack([gn.rmsnorm(r, w, eps) for r in rows]))
    assert ys == exp, first_mismatch(ys, exp)
    assert not any(x["err"] for x in got)


@cocotb.test()
async def act_quant_real_rows(dut):
    """Per-token INT8 quantization over 2560 and 4096 elements (plus an all-zero row)."""
    from ternopu.golden import bitnet as gb
    tb = TB(dut)
    await tb.reset()
    g = torch.Generator().manual_seed(tb.p.get("seed", 1))
    rows = [(torch.randn(2560, generator=g) * 2).float(), (torch.randn(4096, generator=g) * 1e-3).float(),
            torch.zeros(64)]
    rows[0][17] = 40.0  # outlier sets amax
    items = rows_items([bits(r) for r in rows], lambda r, j: {"x": r[j]})
    got = await tb.run({"q_obs": items, "q_x": items}, "q_o", len(items))
    exp_q, exp_a = [], []
    for r in rows:
        xq, amax = gb.int8_act_quant(r[None])
        exp_q += xq.reshape(-1).tolist()
        exp_a += bits(amax) * r.numel()
    assert [x["q"] for x in got] == exp_q
    assert [x["amax"] for x in got] == exp_a
    assert not any(x["err"] for x in got)


@cocotb.test()
async def softmax_4096_scores(dut):
    """Online softmax over 4096 scores (64 chunks of 64) plus rows that end mid-chunk and rows
    whose running max crosses integers chunk after chunk (folds)."""
    from ternopu.golden import nonlinear as gn
    tb = TB(dut)
    await tb.reset()
    g = torch.Generator().manual_seed(tb.p.get("seed", 1))
    rows = [(torch.randn(4096, generator=g) * 4).float(),
            (torch.arange(300, dtype=torch.float32) * 0.05 - 3 + torch.randn(300, generator=g) * 0.2),
            (torch.randn(65, generator=g) * 20).float()]
    rows[0][:100] -= 30.0   # the max comes late: folds in the long row
    items = rows_items([bits(r) for r in rows], lambda r, j: {"s": r[j]})
    got = await tb.run({"sm_s": items, "sm_p_in": items}, "sm_o", len(items))
    ps = [x["p"] for x in got]
    exp = bits(torch.cat([gn.softmax_online(r, SOFTMAX_CHUNK) for r in rows]))
    assert ps == exp, first_mismatch(ps, exp)
    assert not any(x["err"] for x in got)


@cocotb.test()
async def rope_32_heads(dut):
    """RoPE over 32 heads x 128 (Llama-2-7B query) at position 4095, theta 1e4."""
    from ternopu.golden import nonlinear as gn
    tb = TB(dut)
    await tb.reset()
    g = torch.Generator().manual_seed(tb.p.get("seed", 1))
    heads, dh, pos = 32, 128, 4095
    cos, sin = gn.rope_tables(pos + 1, dh, 1e4)
    x = torch.randn(heads, dh, generator=g).float()
    half = dh // 2
    xb, cb, sb = bits(x), bits(cos[pos]), bits(sin[pos])
    items = [{"x1": xb[h * dh + i], "x2": xb[h * dh + half + i], "c": cb[i], "s": sb[i],
              "last": int(i == half - 1)} for h in range(heads) for i in range(half)]
    got = await tb.run({"rope_i": items}, "rope_o", len(items))
    y = gn.rope(x, pos, cos, sin)
    assert [o["y1"] for o in got] == bits(y[:, :half])
    assert [o["y2"] for o in got] == bits(y[:, half:])
    assert not any(o["err"] for o in got)


@cocotb.test()
async def fp16_conversion_sweep(dut):
    """binary32 -> binary16 with saturation over random patterns across the binary16 range."""
    from ternopu.golden import model as gm
    tb = TB(dut)
    await tb.reset()
    g = torch.Generator().manual_seed(tb.p.get("seed", 1))
    raw = torch.randint(0, 2 ** 32, (20000,), generator=g, dtype=torch.int64)
    raw = (raw & 0x87FFFFFF) | 0x30000000  # exponents 2^-31 .. 2^32 (subnormal .. saturating)
    x = raw.to(torch.uint32).view(torch.int32).view(torch.float32)
    got = await tb.run({"fp16_i": [{"x": b, "last": 0} for b in bits(x)]}, "fp16_o", x.numel())
    exp = (gm.to_fp16_sat(x).view(torch.int16).to(torch.int64) & 0xFFFF).tolist()
    assert [o["h"] for o in got] == exp
