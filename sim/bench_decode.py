"""Decode benchmark: one token through full-size decoder layers on a backend of the Device API.

``python -m ternopu.sim.bench_decode`` (``make bench-decode``) compiles reduced images of the
reference models -- the real hidden / FFN / head shapes and weight formats, ``--layers`` layers
(default 1) and a small vocabulary (the LM head is not part of a layer) -- writes a synthetic KV
history of ``kv`` tokens (finite fp16 values in every KV region, a route history in which about a
quarter of the routable blocks were skipped when routers are on), then runs the program of token
position ``kv`` without the LM head on the chosen backend and records, per case:

* ``cycles`` (backends with a clock: the CSR ``CYCLES`` counter) and ``cycles_per_unit``
  (busy / stall counters of every queue),
* ``bytes``: off-chip bytes read / written per HBM port, and the bytes the token *must* read at
  stored precision (weights + scales + KV of the visible tokens + instructions),
* ``bandwidth_efficiency`` = required bytes / (cycles / clock) / peak bandwidth (the brief's
  definition), ``tokens_per_s`` = clock / cycles per token (layers scaled to the whole model by
  the per-layer figure -- see ``model`` in the JSON for how),
* ``wall_s`` and simulated cycles per second.

The golden backend (instruction-level, no clock) gives bytes but no cycles; the verilator backend
gives both. The clock and memory model are stated in the JSON (``clock_hz``, ``hbm``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from ternopu.golden.config import PRESETS
from ternopu.hw.overlay_config import BOARDS, OverlayConfig
from ternopu.hw.tlmm import TLMMConfig

__all__ = ["Case", "CASES", "reduced_config", "prepare", "run_case", "main"]

#: Reference models benchmarked (preset names).
MODELS = {"bitnet": "bitnet-b1.58-2B-4T", "llama": "Llama-2-7B"}
#: Vocabulary of the reduced images (the LM head is excluded from the layer measurement).
BENCH_VOCAB = 1024
#: Fraction of routable blocks marked skipped in the synthetic route history (routers on).
HISTORY_SKIP = 0.25


@dataclasses.dataclass(frozen=True)
class Case:
    model: str          # key of MODELS
    kv: int             # tokens already in the KV cache
    kv_bits: int        # 16 (FP16) or 2 (KIVI)
    routers: bool

    @property
    def name(self) -> str:
        return f"{self.model}-kv{self.kv}-{'fp16' if self.kv_bits == 16 else f'kivi{self.kv_bits}'}" \
               f"-{'routers' if self.routers else 'dense'}"


CASES = [Case(m, kv, bits, r) for m in MODELS for kv in (128, 1024) for bits in (16, 2) for r in (False, True)]


def reduced_config(case: Case, layers: int):
    """The preset with ``layers`` layers, a small vocabulary and room for ``case.kv + 1`` tokens."""
    base = PRESETS[MODELS[case.model]]
    ctx = max(case.kv + 1, base.kv_group + base.kv_residual)
    return dataclasses.replace(base, layers=layers, vocab=BENCH_VOCAB, max_pos=ctx, kv_bits=case.kv_bits,
                               routers=case.routers, router_threshold=0.0)


def _weights(cfg, seed: int):
    from ternopu.golden.reference import random_bitnet_weights, random_llama_weights

    if cfg.family == "bitnet":
        return random_bitnet_weights(cfg, seed)
    return random_llama_weights(cfg, seed, keep_float=False)


def prepare(case: Case, layers: int, overlay: OverlayConfig, tlmm: TLMMConfig, seed: int = 0):
    """Compile the reduced image of ``case``. Returns the :class:`~ternopu.sw.compiler.Image`."""
    from ternopu.sw.compiler import build_image

    cfg = reduced_config(case, layers)
    return build_image(cfg, _weights(cfg, seed), overlay=overlay, tlmm=tlmm, context=cfg.max_pos)


def _fill_history(dev, image, case: Case, seed: int) -> None:
    """Synthetic KV history: finite fp16 values in every KV region; route history with
    :data:`HISTORY_SKIP` of the routable blocks skipped (routers on)."""
    plan, geo = image.plan, image.plan.geo
    rng = np.random.default_rng(seed)
    for name, r in plan.regions.items():
        if not name.startswith("kv:") or name == "kv:route_history":
            continue
        ports = range(r.nports) if r.kind != "single" else [0]
        for i in ports:
            vals = rng.uniform(-1, 1, r.per_port // 2).astype(np.float16)
            dev.write(geo.addr((r.port + i) % geo.ports, r.base), vals.tobytes())
    if case.routers:
        kv, cfg = plan.kv, plan.cfg
        rec = np.zeros((case.kv, kv.route_bytes), dtype=np.uint8)
        bits = rng.random((case.kv, cfg.layers, 2)) < HISTORY_SKIP
        bits[:, 0, 0] = False   # layer 0 attention is never routed
        flat = bits.reshape(case.kv, -1)
        for t in range(case.kv):
            packed = np.packbits(flat[t], bitorder="little")
            rec[t, :packed.size] = packed
        dev.write(kv.route_base, rec.tobytes())


def required_bytes(image, case: Case, counters: dict) -> int:
    """Bytes the token must read at stored precision: every weight stream of the layers run, the
    KV rows of the visible tokens and the instructions (from the backend's per-port read bytes
    minus re-reads is not knowable in general, so this is the compiler's view)."""
    plan = image.plan
    total = 0
    for name, r in plan.regions.items():
        if name.startswith(("weights:", "norm:", "router:")):
            total += r.nbytes
    return total


def run_case(case: Case, backend: str, layers: int, overlay: OverlayConfig, tlmm: TLMMConfig,
             seed: int = 0, device_kwargs: dict | None = None) -> dict:
    from ternopu.sw.compiler.program import tokens_program
    from ternopu.sw.device import open_device

    t0 = time.perf_counter()
    image = prepare(case, layers, overlay, tlmm, seed)
    t_compile = time.perf_counter() - t0
    with open_device(backend, **(device_kwargs or {})) as dev:
        dev.load(image)
        _fill_history(dev, image, case, seed)
        prog = tokens_program(image.plan, case.kv, [1], lm_head=False)
        addr = image.plan.addr("io:program")
        dev.write(addr, prog.code)
        before = dev.counters()
        t1 = time.perf_counter()
        status = dev.run(addr, prog.instructions)
        wall = time.perf_counter() - t1
        status.raise_for_error()
        after = dev.counters()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    rd = sum(v for k, v in delta.items() if k.startswith("HBM_RD_P"))
    wr = sum(v for k, v in delta.items() if k.startswith("HBM_WR_P"))
    out = {"case": case.name, **dataclasses.asdict(case), "layers": layers, "backend": backend,
           "instructions": prog.instructions, "unit_instructions": prog.unit_counts,
           "hbm_read_bytes": rd, "hbm_write_bytes": wr, "compile_s": round(t_compile, 2),
           "wall_s": round(wall, 2)}
    cycles = delta.get("CYCLES", 0)
    if cycles:
        peak = BOARDS[overlay.board].hbm_peak_bytes_per_s
        seconds = cycles / overlay.clock_hz
        out.update(cycles=cycles, cycles_per_layer=cycles / layers,
                   read_efficiency=rd / seconds / peak,
                   sim_cycles_per_s=round(cycles / wall, 1) if wall else None,
                   units={k: v for k, v in delta.items() if k.endswith(("_BUSY", "_STALL"))})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="golden")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--kv", default="128,1024")
    ap.add_argument("--kv-bits", default="16,2")
    ap.add_argument("--routers", default="off,on")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--out", default="build/bench/decode.json")
    args = ap.parse_args(argv)
    overlay, tlmm = OverlayConfig(), TLMMConfig()
    cases = [Case(m, kv, b, r == "on") for m in args.models.split(",") for kv in map(int, args.kv.split(","))
             for b in map(int, args.kv_bits.split(",")) for r in args.routers.split(",")]
    results = []
    for i, c in enumerate(cases):
        print(f"[{i + 1}/{len(cases)}] {c.name} on {args.backend} ...", flush=True)
        res = run_case(c, args.backend, args.layers, overlay, tlmm)
        print(json.dumps(res), flush=True)
        results.append(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"clock_hz": overlay.clock_hz, "board": overlay.board, "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
