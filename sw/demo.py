"""``python -m ternopu.sw.demo`` (``make demo``): decode on the cycle-accurate overlay, check it
against the golden model, then score the golden model against a float reference.

Part 1 -- the overlay (the main job):

1. Write a small BitNet b1.58 checkpoint (HF float-master format, bf16 safetensors, routers) with
   random weights and load it with the real loader (:mod:`ternopu.golden.loaders`).
2. Compile it (:func:`ternopu.sw.compiler.build_image`) for a 2-port overlay with small engines
   (:data:`OVERLAY_ENGINES`): HBM image (weights per unit format, KV regions, route history) and
   the decode programs.
3. Build the Verilated overlay (all real units, cached in ``sim_build/``; the first build takes
   minutes) and greedy-decode :data:`DEMO_TOKENS` tokens on it through the Device API, with a
   progress bar; decode the same prompt on the golden model.
4. Compare token ids and every step's logits bit for bit, and print the run report (``ternopu
   report``'s table): cycles per token, modelled tokens/s at the overlay clock (300 MHz), HBM
   bytes, bandwidth efficiency against the 2 ports' peak, busy cycles per unit, KV bytes saved.
   Memory model: the HDL HBM model, 45-cycle read latency, one 32-byte beat per cycle per port.

Part 2 -- accuracy (golden model vs float reference): a BitNet and an INT4 Llama (GPTQ)
checkpoint, greedy decode of 16 tokens, top-1 agreement and mean KL, once with FP16 KV and no
routers and once with routers and a 2-bit KIVI KV cache.

``--golden-only`` skips part 1. Exit status 1 if the overlay differs from the golden model or an
accuracy check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ternopu.golden.config import BITNET_TINY, LLAMA_TINY
from ternopu.golden.loaders import load_checkpoint, save_gptq_checkpoint, save_hf_checkpoint
from ternopu.golden.model import GoldenModel
from ternopu.golden.reference import (
    ReferenceModel,
    compare_greedy,
    random_bitnet_weights,
    random_llama_weights,
    random_router_weights,
)
from ternopu.hw.overlay_config import OverlayConfig
from ternopu.hw.units import SMALL_ENGINES

# ---- part 1: the overlay ---------------------------------------------------------------------------
#: The overlay demo's model: 2 layers, hidden 64, GQA, routers on, FP16 KV (the shapes of the
#: end-to-end test tests/sim/test_e2e_overlay.py, which shares the Verilator build).
_OVERLAY_SHAPES = dict(layers=2, hidden=64, heads=2, head_dim=32, ffn=128, vocab=128, int4_group=32, max_pos=32,
                       kv_group=8, kv_residual=8, routers=True, router_threshold=-0.5)


def overlay_model(family: str = "bitnet", kv_bits: int = 16):
    """The overlay demo's shapes for either family (BitNet with GQA, INT4 Llama with group 32)."""
    base = BITNET_TINY if family == "bitnet" else LLAMA_TINY
    return base.replace(name=f"{family}-overlay-demo", kv_heads=1 if family == "bitnet" else 2, kv_bits=kv_bits,
                        **_OVERLAY_SHAPES)


OVERLAY_MODEL = overlay_model()
#: Engines of the demo / test overlay (:data:`ternopu.hw.units.SMALL_ENGINES`: TLMM 3 tables x 8
#: lanes, PE array 8 x 4 DSPs with INT4 group 32; small, so the Verilator build takes minutes).
OVERLAY_ENGINES = SMALL_ENGINES
#: HBM ports of the demo overlay.
OVERLAY_PORTS = 2
OVERLAY_PROMPT = [1, 5, 7]
#: Tokens generated on the overlay by the end-to-end test (tests/sim/test_e2e_overlay.py).
OVERLAY_TOKENS = 16
#: Tokens generated on the overlay by ``make demo`` (each costs ~15k simulated cycles, ~15 s with
#: :data:`ternopu.sw.backends.verilator.DECODE_BUILD` on a 2-core machine; ``--tokens`` changes it).
DEMO_TOKENS = 8

#: Tokens decoded per run.
DECODE_TOKENS = 16
#: Prompt fed before decoding.
PROMPT = [1, 17, 42, 7]
#: Router threshold of the routed runs (skips a fraction of the blocks of the random models).
ROUTER_THRESHOLD = -0.5
#: Demo models: smaller than the tiny presets (so the demo stays well under a minute on a busy
#: 2-core machine), same structure (GQA in BitNet), KIVI groups small enough that 2-bit groups
#: form within 20 tokens.
_DEMO_SHAPES = dict(layers=2, hidden=128, ffn=256, heads=2, head_dim=64, vocab=256,
                    kv_group=8, kv_residual=8, routers=True, router_threshold=ROUTER_THRESHOLD)
DEMO_BITNET = BITNET_TINY.replace(name="bitnet-demo", kv_heads=1, **_DEMO_SHAPES)
DEMO_LLAMA = LLAMA_TINY.replace(name="llama-demo", kv_heads=2, **_DEMO_SHAPES)
#: Pass criteria per run kind: (min top-1 agreement, max mean KL in nats).
CHECKS = {"fp16 KV": (0.85, 0.02), "routers + 2-bit KV": (0.75, 0.1)}


def _write_checkpoints(root: Path) -> tuple[Path, Path]:
    bit_dir = save_hf_checkpoint(root / "bitnet-hf", DEMO_BITNET, random_bitnet_weights(DEMO_BITNET, 2026))
    llama_w = random_llama_weights(DEMO_LLAMA, 2026, keep_float=False)
    llama_dir = save_gptq_checkpoint(root / "llama-gptq", DEMO_LLAMA, llama_w, legacy_zero_offset=False)
    return bit_dir, llama_dir


def _run(directory: Path, kind: str) -> dict:
    """Load, decode with golden and reference, return one table row."""
    overrides = {"kv_bits": 16, "routers": False} if kind == "fp16 KV" else {"kv_bits": 2, "routers": True}
    cfg, weights = load_checkpoint(directory, **overrides)
    # "matmul": exact integer matmul for BitLinear, bit-identical to tlmm_linear (tested in
    # tests/golden/test_model.py) and faster on a CPU; the Llama path is the same either way.
    golden = GoldenModel.from_config_and_weights(cfg, weights, linear_path="matmul")
    reference = ReferenceModel(cfg, weights)
    res = compare_greedy(golden, reference, PROMPT, DECODE_TOKENS)
    steps = len(PROMPT) + DECODE_TOKENS - 1
    stats = golden.kv_stats()
    top1_min, kl_max = CHECKS[kind]
    ok = res.top1_agreement >= top1_min and res.mean_kl <= kl_max
    return {
        "model": "BitNet (HF bf16)" if cfg.family == "bitnet" else "Llama (GPTQ INT4)",
        "kind": kind,
        "tok_s": steps / golden.last_generate_seconds,
        "top1": res.top1_agreement,
        "kl": res.mean_kl,
        "kv": f"{stats.bytes_stored:,} / {stats.bytes_dense:,}",
        "skip": stats.skipped_fraction,
        "ok": ok,
        "tokens": res.tokens,
    }


def overlay_image(root: Path):
    """Checkpoint -> loader -> compiler -> image on disk -> image (the CLI's path). Returns
    ``(image, cfg, weights)``."""
    from ternopu.sw.compiler import build_image, read_image, write_image

    cfg = OVERLAY_MODEL
    w = random_bitnet_weights(cfg, 2026)
    w.update(random_router_weights(cfg, 2027))
    cfg, weights = load_checkpoint(save_hf_checkpoint(root / "bitnet-hf", cfg, w))
    image = build_image(cfg, weights, overlay=OverlayConfig(hbm_ports=OVERLAY_PORTS), tlmm=OVERLAY_ENGINES[0])
    return read_image(write_image(image, root / "image")), cfg, weights


def run_overlay(console: Console, tokens: int = DEMO_TOKENS) -> bool:
    """Part 1 (module docstring). Returns True when the overlay matched the golden model."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ternopu.hw.units import default_units
    from ternopu.sw.backends.verilator import DECODE_BUILD, VerilatorDevice
    from ternopu.sw.cli import print_report, run_report
    from ternopu.sw.device import Session

    with tempfile.TemporaryDirectory(prefix="ternopu-demo-") as tmp:
        image, cfg, weights = overlay_image(Path(tmp))
    console.print(f"compiled {cfg.name} (HF checkpoint -> loader -> image): {cfg.layers} layers, hidden "
                  f"{cfg.hidden}, vocab {cfg.vocab}, routers on (threshold {cfg.router_threshold}), FP16 KV; "
                  f"{image.plan.used_bytes:,} bytes of HBM over {OVERLAY_PORTS} ports")
    golden = GoldenModel.from_config_and_weights(cfg, weights, linear_path="matmul")
    ref_tokens = golden.generate(OVERLAY_PROMPT, tokens)
    ref_logits = golden.step_logits[len(OVERLAY_PROMPT) - 1:]
    device = VerilatorDevice(units=default_units(*OVERLAY_ENGINES), build_args=DECODE_BUILD, max_cycles=5_000_000)
    with device:
        t0 = time.perf_counter()
        with console.status("building / starting the Verilated overlay (cached in sim_build/; the first "
                            "build takes several minutes)"):
            session = Session(device, image)
        console.print(f"overlay simulator ready in {time.perf_counter() - t0:.0f} s")
        cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*cols, console=console) as prog:
            task = prog.add_task("cycle-accurate decode", total=tokens)
            result = session.generate(OVERLAY_PROMPT, tokens,
                                      progress=lambda i, n: prog.update(task, completed=i))
        report = run_report(image, session, result, "verilator", OVERLAY_PROMPT)
    same_tokens = result.tokens == ref_tokens
    same_logits = len(result.logits) == len(ref_logits) and all(
        a.contiguous().view(torch.int32).equal(b.contiguous().view(torch.int32))
        for a, b in zip(result.logits, ref_logits))
    print_report(report, console)
    cycles = sum(p["cycles"] or 0 for p in report["programs"])
    wall = sum(p["wall_seconds"] for p in report["programs"])
    console.print(f"simulation: {cycles:,} cycles of the whole run in {wall:.0f} s of host time "
                  f"({cycles / wall:,.0f} simulated cycles/s)")
    console.print(f"overlay tokens: {result.tokens}")
    console.print(f"golden  tokens: {ref_tokens}")
    if same_tokens and same_logits:
        console.print(f"[bold green]overlay == golden model: {tokens} token ids and every step's logits "
                      "identical bit for bit[/]")
        return True
    console.print("[bold red]overlay differs from the golden model "
                  f"(token ids {'equal' if same_tokens else 'differ'}, logits differ)[/]")
    return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ternopu.sw.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--golden-only", action="store_true", help="skip the cycle-accurate overlay part")
    ap.add_argument("--tokens", type=int, default=DEMO_TOKENS, help="tokens generated on the overlay")
    args = ap.parse_args(argv)
    if args.tokens < 1:
        ap.error(f"--tokens must be >= 1, got {args.tokens}")
    console = Console(width=120)
    start = time.perf_counter()
    overlay_ok = True
    if not args.golden_only:
        console.rule("part 1: cycle-accurate overlay vs golden model")
        overlay_ok = run_overlay(console, args.tokens)
    console.rule("part 2: golden model vs float reference")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ternopu-demo-") as tmp:
        bit_dir, llama_dir = _write_checkpoints(Path(tmp))
        console.print(f"wrote checkpoints: {bit_dir.name} (HF safetensors), {llama_dir.name} (GPTQ)")
        for directory in (bit_dir, llama_dir):
            for kind in CHECKS:
                rows.append(_run(directory, kind))
    table = Table(title=f"Golden model vs float reference, greedy decode of {DECODE_TOKENS} tokens",
                  caption="* speed of the golden simulator on this CPU (not hardware); BitLinear via "
                          "the exact integer matmul, bit-identical to the TLMM path.\n"
                          "KL = mean KL(ref || golden) in nats; KV bytes at stored precision.")
    for col in ("model", "run", "sim tok/s*", "top-1", "KL", "KV bytes stored/dense", "skipped", "check"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], r["kind"], f"{r['tok_s']:.1f}", f"{r['top1']:.3f}", f"{r['kl']:.2e}",
                      r["kv"], f"{r['skip']:.1%}", "[green]ok[/]" if r["ok"] else "[red]FAIL[/]")
    console.print(table)
    for r in rows:
        console.print(f"{r['model']} [{r['kind']}] tokens: {r['tokens']}")
    console.print(f"total demo time {time.perf_counter() - start:.1f} s")
    if not all(r["ok"] for r in rows):
        console.print("[bold red]accuracy check failed[/]")
        return 1
    return 0 if overlay_ok else 1


if __name__ == "__main__":
    sys.exit(main())
