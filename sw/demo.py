"""``python -m ternopu.sw.demo`` (``make demo``): golden-model decode of two tiny models.

The cycle-accurate overlay (RTL + driver) is NOT built yet: this demo runs the bit-exact PyTorch
golden model, the definition the hardware will be checked against, and compares it with the float
reference. Steps:

1. Write a tiny BitNet b1.58 checkpoint (HF float-master format, bf16 safetensors) and a tiny
   INT4 Llama checkpoint (GPTQ format) with random weights into a temporary directory.
2. Load both with the real loaders (:mod:`ternopu.golden.loaders`).
3. Greedy-decode 16 tokens with the golden model and score the float reference on the same tokens
   (top-1 agreement, mean KL(ref || golden)); once with FP16 KV and no routers, once with routers
   on and a 2-bit KIVI KV cache.
4. Print a table. Tokens/s is the speed of the golden *simulator on this CPU*, not of hardware.

Exit status 1 if an accuracy check fails.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

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
)

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


def main(argv=None) -> int:
    console = Console(width=120)
    console.print("[bold yellow]ternopu demo: the cycle-accurate overlay is not built yet; this runs "
                  "the bit-exact golden model (PyTorch) on the CPU.[/]")
    start = time.perf_counter()
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
