"""Read/write/striped DMAs against the Amaranth HBM model, in the Amaranth simulator.

Bit-exact data, burst cutting (4 KiB boundaries, max burst, lengths not a multiple of the burst),
2-D strided transfers, error completions, the model's latency and bandwidth limit.
"""

from __future__ import annotations

import random

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator
from hypothesis import given
from hypothesis import strategies as st

from ternopu.golden.errors import ConfigError
from ternopu.hw.axi import (BOUNDARY_BYTES, AXI4Signature, cocotb_signal_map, split_bursts)
from ternopu.hw.dma import (DMA_ERR_DECERR, DMA_ERR_MISALIGNED, DMA_ERR_RANGE, DMA_ERR_SLVERR,
                            DMA_OK, DmaParams, DmaPort, ReadDMA, StripedReader, WriteDMA,
                            stripe_layout, stripe_merge, stripe_split)
from ternopu.sim.hbm_model import (U280_RATE, U280_READ_LATENCY, HbmModel, port_rate)

DW = 64           # small words keep the Python simulator fast; 4 KiB = 512 beats
BB = DW // 8
DEPTH = 2048      # 16 KiB model


def pattern(depth, seed=1, width=DW):
    rng = random.Random(seed)
    return [rng.getrandbits(width) for _ in range(depth)]


def build(params=None, hbm_kw=None):
    p = params or DmaParams(data_width=DW, max_burst=16, max_outstanding=4, mem_bytes=DEPTH * BB)
    kw = dict(data_width=DW, read_latency=12, rate=(1, 1), init=pattern(DEPTH))
    kw.update(hbm_kw or {})
    dma, hbm = DmaPort(p), HbmModel(DEPTH, **kw)
    m = Module()
    m.submodules.dma, m.submodules.hbm = dma, hbm
    wiring.connect(m, dma.axi, hbm.axi)
    return m, dma, hbm


def run(m, dma, hbm, reads=(), writes=(), stall_p=0.0, seed=0, max_cycles=20000):
    """Issue read commands (and write commands with their data) in order; return a trace."""
    rng = random.Random(seed)
    out = {"data": [], "done_rd": [], "done_wr": [], "ar": [], "aw": [], "cycles": 0,
           "first_r": None, "ar_cycle": None}

    def cmd(c):
        a, beats, rows, stride = (list(c) + [1, 0])[:4] if len(c) == 2 else c
        return {"addr": a, "beats": beats, "rows": rows, "stride": stride}

    async def issue(ctx):
        for c, words in writes:
            ctx.set(dma.wr_cmd.payload, cmd(c))
            ctx.set(dma.wr_cmd.valid, 1)
            await ctx.tick().until(dma.wr_cmd.ready)
            ctx.set(dma.wr_cmd.valid, 0)
            for wd in words:
                ctx.set(dma.wr_data.payload, wd)
                ctx.set(dma.wr_data.valid, 1)
                await ctx.tick().until(dma.wr_data.ready)
            ctx.set(dma.wr_data.valid, 0)
            while not ctx.get(dma.wr_done.valid):
                await ctx.tick()
            out["done_wr"].append(ctx.get(dma.wr_done.payload))
            ctx.set(dma.wr_done.ready, 1)
            await ctx.tick()
            ctx.set(dma.wr_done.ready, 0)
        for c in reads:
            ctx.set(dma.rd_cmd.payload, cmd(c))
            ctx.set(dma.rd_cmd.valid, 1)
            await ctx.tick().until(dma.rd_cmd.ready)
            ctx.set(dma.rd_cmd.valid, 0)
            while not ctx.get(dma.rd_done.valid):
                await ctx.tick()
            out["done_rd"].append(ctx.get(dma.rd_done.payload))
            ctx.set(dma.rd_done.ready, 1)
            await ctx.tick()
            ctx.set(dma.rd_done.ready, 0)
        out["finished"] = True

    async def sink(ctx):
        n = 0
        while True:
            ctx.set(dma.rd_data.ready, rng.random() >= stall_p)
            _, _, v, r, pl, arv, arr, ara, arl, awv, awr, awa, awl, rv = await ctx.tick().sample(
                dma.rd_data.valid, dma.rd_data.ready, dma.rd_data.payload,
                hbm.axi.ar.valid, hbm.axi.ar.ready, hbm.axi.ar.addr, hbm.axi.ar.len,
                hbm.axi.aw.valid, hbm.axi.aw.ready, hbm.axi.aw.addr, hbm.axi.aw.len,
                hbm.axi.r.valid)
            if v and r:
                out["data"].append((pl.data, pl.last))
            if arv and arr:
                out["ar"].append((ara, arl + 1))
                if out["ar_cycle"] is None:
                    out["ar_cycle"] = n
            if rv and out["first_r"] is None:
                out["first_r"] = n
            if awv and awr:
                out["aw"].append((awa, awl + 1))
            n += 1
            out["cycles"] = n
            assert n < max_cycles, f"DMA did not complete within {max_cycles} cycles"

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(issue)
    sim.add_testbench(sink, background=True)
    sim.run()
    assert out.get("finished")
    return out


def expected_read(mem, c, bb=BB):
    a, beats, rows, stride = (list(c) + [1, 0])[:4] if len(c) == 2 else c
    return [mem[(a + r * stride) // bb + i] for r in range(rows) for i in range(beats)]


def expected_bursts(c, max_burst=16, dw=DW):
    a, beats, rows, stride = (list(c) + [1, 0])[:4] if len(c) == 2 else c
    return [b for r in range(rows) for b in split_bursts(a + r * stride, beats, dw, max_burst)]


# ---------------------------------------------------------------------------------------------
# Reference burst cutting
# ---------------------------------------------------------------------------------------------

def test_split_bursts_examples():
    assert split_bursts(0, 0) == []
    # 256-bit beats: 4 KiB = 128 beats; 64-beat bursts.
    assert split_bursts(0, 200, 256, 64) == [(0, 64), (2048, 64), (4096, 64), (6144, 8)]
    # Starts 2 beats before a boundary: a 2-beat burst, then full ones.
    assert split_bursts(4096 - 64, 5, 256, 64) == [(4032, 2), (4096, 3)]
    assert split_bursts(0, 300, 256, 256) == [(0, 128), (4096, 128), (8192, 44)]
    with pytest.raises(ConfigError, match="multiple of the 32-byte beat"):
        split_bursts(16, 4, 256)
    with pytest.raises(ConfigError, match="max_burst"):
        split_bursts(0, 4, 256, 257)
    with pytest.raises(ConfigError, match=">= 0"):
        split_bursts(0, -1)


@given(st.integers(0, 1 << 20), st.integers(0, 2000), st.sampled_from([64, 256, 512]),
       st.integers(1, 256))
def test_split_bursts_properties(beat_index, nbeats, dw, max_burst):
    bb = dw // 8
    addr = beat_index * bb
    bursts = split_bursts(addr, nbeats, dw, max_burst)
    assert sum(n for _, n in bursts) == nbeats
    nxt = addr
    for a, n in bursts:
        assert a == nxt and 1 <= n <= max_burst
        assert a // BOUNDARY_BYTES == (a + n * bb - 1) // BOUNDARY_BYTES  # no 4 KiB crossing
        nxt = a + n * bb
    # Greedy: every burst but the last ends at max_burst or at a boundary.
    for a, n in bursts[:-1]:
        assert n == max_burst or (a + n * bb) % BOUNDARY_BYTES == 0


def test_signal_map_and_signature_names():
    assert cocotb_signal_map("ar")["arvalid"] == "ar__valid"
    assert cocotb_signal_map("w")["wstrb"] == "w__strb"
    with pytest.raises(ConfigError, match="channel"):
        cocotb_signal_map("x")
    sig = AXI4Signature()
    assert sig.data_width == 256 and sig.addr_width == 34
    assert set(sig.members) == {"ar", "r", "aw", "w", "b"}
    with pytest.raises(ConfigError, match="data_width"):
        AXI4Signature(data_width=100)
    with pytest.raises(ConfigError, match="addr_width"):
        AXI4Signature(addr_width=8)


def test_parameters_validated():
    with pytest.raises(ConfigError, match="max_burst"):
        DmaParams(max_burst=0)
    with pytest.raises(ConfigError, match="max_outstanding"):
        DmaParams(max_outstanding=0)
    with pytest.raises(ConfigError, match="mem_bytes"):
        DmaParams(mem_bytes=100)
    with pytest.raises(ConfigError, match="axi_id"):
        DmaParams(id_width=2, axi_id=4)
    with pytest.raises(ConfigError, match="ports"):
        StripedReader(3)
    with pytest.raises(ConfigError, match="port_bases"):
        StripedReader(2, port_bases=[0])
    with pytest.raises(ConfigError, match="read_latency"):
        HbmModel(16, read_latency=1)
    with pytest.raises(ConfigError, match="rate"):
        HbmModel(16, rate=(0, 4))
    with pytest.raises(ConfigError, match="init"):
        HbmModel(2, init=[0, 0, 0])
    r = ReadDMA(max_burst=32, max_outstanding=6)
    assert (r.MAX_BURST, r.MAX_OUTSTANDING) == (32, 6)
    w = WriteDMA()
    assert (w.MAX_BURST, w.MAX_OUTSTANDING) == (64, 8)


def test_u280_constants():
    assert port_rate(512) == U280_RATE == (3, 4)
    assert port_rate(256) == (3, 2)               # the port, not HBM, limits at 300 MHz
    assert port_rate(256, clock_hz=450e6) == (1, 1)
    assert U280_READ_LATENCY == 45


# ---------------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------------

READS = [
    (0, 1),                          # single beat
    (8 * 5, 40),                     # not a multiple of the 16-beat burst
    (4096 - 3 * BB, 20),             # crosses the 4 KiB boundary 3 beats in
    (4096 - 16 * BB, 16),            # ends exactly at the boundary
    (1000 * BB, 7, 4, 64 * BB),      # 2-D: 4 rows of 7 beats, stride 64 beats
    (500 * BB, 12, 3, 12 * BB),      # 2-D with contiguous rows (stride = row)
    (510 * BB, 3, 3, 2 * BB),        # 2-D: overlapping rows, crossing the boundary
]


def test_reads_bit_exact_and_bursts_cut():
    m, dma, hbm = build()
    tr = run(m, dma, hbm, reads=READS, stall_p=0.3, seed=3)
    mem = pattern(DEPTH)
    exp = [w for c in READS for w in expected_read(mem, c)]
    assert [d for d, _ in tr["data"]] == exp
    # ``last`` exactly on each command's final word.
    lasts = [i for i, (_, l) in enumerate(tr["data"]) if l]
    ends, n = [], 0
    for c in READS:
        n += len(expected_read(mem, c))
        ends.append(n - 1)
    assert lasts == ends
    assert tr["ar"] == [b for c in READS for b in expected_bursts(c)]
    assert tr["done_rd"] == [DMA_OK] * len(READS)


def test_read_latency_exact_and_outstanding_limit():
    m, dma, hbm = build(hbm_kw={"read_latency": 20})
    tr = run(m, dma, hbm, reads=[(0, 64)])
    assert tr["first_r"] - tr["ar_cycle"] == 20
    # 4 outstanding bursts: the 5th... here only 4 bursts of 16, all issued back to back.
    assert tr["ar"] == [(0, 16), (128, 16), (256, 16), (384, 16)]


@pytest.mark.parametrize("rate,outstanding,expect", [((3, 4), 4, 0.75), ((1, 1), 4, 1.0),
                                                     ((1, 1), 1, 16 / (16 + 12))])
def test_read_throughput_matches_rate(rate, outstanding, expect):
    """Sustained beats/cycle = the rate limit when outstanding bursts cover the latency, else
    one burst per round trip."""
    p = DmaParams(data_width=DW, max_burst=16, max_outstanding=outstanding, mem_bytes=DEPTH * BB)
    m, dma, hbm = build(p, {"rate": rate, "read_latency": 12})
    times = _beat_times(m, dma, hbm, (0, 256))
    assert len(times) == 256
    got = (len(times) - 1) / (times[-1] - times[0])
    assert got == pytest.approx(expect, rel=0.04), got


def _beat_times(m, dma, hbm, c):
    times = []

    async def tb(ctx):
        ctx.set(dma.rd_cmd.payload, {"addr": c[0], "beats": c[1], "rows": 1, "stride": 0})
        ctx.set(dma.rd_cmd.valid, 1)
        ctx.set(dma.rd_data.ready, 1)
        ctx.set(dma.rd_done.ready, 1)
        n = 0
        while True:
            _, _, v, dv = await ctx.tick().sample(dma.rd_data.valid, dma.rd_done.valid)
            ctx.set(dma.rd_cmd.valid, 0)
            if v:
                times.append(n)
            if dv:
                break
            n += 1

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return times


# ---------------------------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------------------------

def test_writes_then_read_back():
    rng = random.Random(11)
    writes = []
    for c in [(4096 - 5 * BB, 23), (64 * BB, 16), (300 * BB, 5, 3, 40 * BB), (10 * BB, 1)]:
        n = c[1] * (c[2] if len(c) > 2 else 1)
        writes.append((c, [rng.getrandbits(DW) for _ in range(n)]))
    mem = pattern(DEPTH)
    for c, words in writes:
        a, beats, rows, stride = (list(c) + [1, 0])[:4] if len(c) == 2 else c
        k = 0
        for r in range(rows):
            for i in range(beats):
                mem[(a + r * stride) // BB + i] = words[k]
                k += 1
    reads = [(0, 1024)]
    m, dma, hbm = build()
    tr = run(m, dma, hbm, reads=reads, writes=writes, stall_p=0.2, seed=5)
    assert tr["done_wr"] == [DMA_OK] * len(writes)
    assert tr["aw"] == [b for c, _ in writes for b in expected_bursts(c)]
    assert [d for d, _ in tr["data"]] == mem[:1024]


# ---------------------------------------------------------------------------------------------
# Errors: completion codes, never a hang
# ---------------------------------------------------------------------------------------------

def test_error_completions():
    p = DmaParams(data_width=DW, max_burst=16, max_outstanding=4, mem_bytes=2 * DEPTH * BB)
    m, dma, hbm = build(p, {"slverr_range": (200 * BB, 210 * BB)})
    reads = [
        (4, 4),                         # misaligned address
        (0, 4, 2, 12),                  # misaligned stride
        (2 * DEPTH * BB - BB, 2),       # beyond mem_bytes
        (0, 10, 300, 16 * BB),          # 2-D span beyond mem_bytes
        (195 * BB, 10),                 # SLVERR region: data still delivered
        (DEPTH * BB - 2 * BB, 4),       # DMA range ok, model has no memory there: DECERR
        (0, 0),                         # empty: OK, no data
        (0, 3, 0, 0),                   # zero rows: OK, no data
        (8 * BB, 2),                    # and the DMA still works afterwards
    ]
    tr = run(m, dma, hbm, reads=reads)
    assert tr["done_rd"] == [DMA_ERR_MISALIGNED, DMA_ERR_MISALIGNED, DMA_ERR_RANGE, DMA_ERR_RANGE,
                             DMA_ERR_SLVERR, DMA_ERR_DECERR, DMA_OK, DMA_OK, DMA_OK]
    mem = pattern(DEPTH)
    exp = ([mem[195 + i] if not 200 <= 195 + i < 210 else 0 for i in range(10)]
           + [mem[DEPTH - 2], mem[DEPTH - 1], 0, 0] + mem[8:10])
    assert [d for d, _ in tr["data"]] == exp


def test_write_errors():
    p = DmaParams(data_width=DW, max_burst=16, max_outstanding=4, mem_bytes=2 * DEPTH * BB)
    m, dma, hbm = build(p, {"slverr_range": (100 * BB, 101 * BB)})
    writes = [((3, 2), []), ((2 * DEPTH * BB, 1), []), ((98 * BB, 4), [1, 2, 3, 4]),
              ((DEPTH * BB, 2), [5, 6]), ((0, 1), [7])]
    tr = run(m, dma, hbm, reads=[(96 * BB, 8), (0, 1)], writes=writes)
    assert tr["done_wr"] == [DMA_ERR_MISALIGNED, DMA_ERR_RANGE, DMA_ERR_SLVERR, DMA_ERR_DECERR,
                             DMA_OK]
    mem = pattern(DEPTH)
    # The beat in the SLVERR region was not written; its neighbours were.
    assert [d for d, _ in tr["data"]] == mem[96:98] + [1, 2, 0, 4] + mem[102:104] + [7]


# ---------------------------------------------------------------------------------------------
# Striping
# ---------------------------------------------------------------------------------------------

def test_stripe_layout_roundtrip_and_locate():
    buf = bytes(random.Random(2).getrandbits(8) for _ in range(1000))
    lay = stripe_layout(1000, 4, beat_bytes=32, base=64)
    assert lay.total_beats == 32 and lay.beats_per_port == [8, 8, 8, 8]
    assert lay.locate(5) == (1, 64 + 32)
    imgs = stripe_split(buf, lay)
    assert [len(i) for i in imgs] == [256] * 4
    assert imgs[1][:32] == buf[32:64] and imgs[0][32:64] == buf[128:160]
    assert stripe_merge(imgs, lay) == buf
    lay2 = stripe_layout(33 * 32 + 1, 4)
    assert lay2.beats_per_port == [9, 9, 8, 8]
    assert stripe_layout(32, 4).beats_per_port == [1, 0, 0, 0]
    with pytest.raises(ConfigError, match="ports"):
        stripe_layout(10, 0)
    with pytest.raises(ConfigError, match="base"):
        stripe_layout(10, 2, base=3)
    with pytest.raises(ConfigError, match="beat"):
        lay.locate(32)
    with pytest.raises(ConfigError, match="bytes"):
        stripe_split(b"x", lay)


@pytest.mark.parametrize("ports,beats,err_port", [(4, 37, None), (2, 1, None), (4, 0, None),
                                                  (4, 40, 2)])
def test_striped_reader_merges_in_order(ports, beats, err_port):
    depth = 256
    rng = random.Random(ports * 100 + beats)
    buf = bytes(rng.getrandbits(8) for _ in range(beats * BB))
    base = 16 * BB
    lay = stripe_layout(len(buf), ports, beat_bytes=BB, base=base)
    imgs = stripe_split(buf, lay)
    p = DmaParams(data_width=DW, max_burst=8, max_outstanding=2, mem_bytes=depth * BB)
    sr = StripedReader(ports, params=p)
    m = Module()
    m.submodules.sr = sr
    for q in range(ports):
        words = [0] * depth
        for j in range(lay.beats_per_port[q]):
            words[base // BB + j] = int.from_bytes(imgs[q][j * BB:(j + 1) * BB], "little")
        kw = {"slverr_range": (base + 3 * BB, base + 4 * BB)} if q == err_port else {}
        hbm = HbmModel(depth, data_width=DW, read_latency=6 + 3 * q, rate=(1, 1), init=words, **kw)
        m.submodules[f"hbm{q}"] = hbm
        for ch in ("ar", "r"):  # a read-only master: the model's write channels stay idle
            wiring.connect(m, getattr(sr.axi[q], ch), getattr(hbm.axi, ch))
    got, done = [], []
    srng = random.Random(9)

    async def tb(ctx):
        ctx.set(sr.cmd.payload, {"addr": base, "beats": beats})
        ctx.set(sr.cmd.valid, 1)
        ctx.set(sr.done.ready, 1)
        while True:
            ctx.set(sr.data.ready, srng.random() < 0.7)
            _, _, v, r, pl, dv, dp, cr = await ctx.tick().sample(
                sr.data.valid, sr.data.ready, sr.data.payload, sr.done.valid, sr.done.payload,
                sr.cmd.ready)
            if cr:
                ctx.set(sr.cmd.valid, 0)
            if v and r:
                got.append((pl.data, pl.count, pl.last))
            if dv:
                done.append(dp)
                break

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run_until(1e-4)
    if err_port is not None:
        assert done == [DMA_ERR_SLVERR]
        return
    assert done == [DMA_OK]
    out = b"".join(d.to_bytes(ports * BB, "little")[:c * BB] for d, c, _ in got)
    assert out == buf
    assert [l for _, _, l in got] == [0] * (len(got) - 1) + [1] * bool(got)
    assert all(c == ports for _, c, _ in got[:-1])
