"""``ternopu`` command line: compile a model, run it on a backend, report, plan memory.

::

    ternopu compile --model DIR | --preset NAME --out IMAGE_DIR [--kv-bits 2] [--routers] ...
    ternopu run --image IMAGE_DIR --backend golden --prompt 1,2,3 --tokens 16 --report out.json
    ternopu report out.json
    ternopu plan --preset NAME [--context N] [--kv-bits B]

Bad input (missing or malformed checkpoint / image, unsupported architecture, a model that does
not fit, a device error code) prints ``error: <message>`` on stderr and exits with status 2, no
traceback. The run report is JSON (schema in docs/compiler.md); the golden backend is functional,
so it reports bytes and instructions but no cycles; the verilator backend (the cycle-accurate
overlay RTL) adds cycles per token, busy / stall cycles per unit and the bandwidth efficiency at
the overlay's clock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ternopu.golden.errors import TernopuError

__all__ = ["main", "build_parser", "run_report", "print_report", "REPORT_FORMAT", "EXIT_USAGE"]

#: Exit status for bad input / failed runs (argparse uses it for usage errors too).
EXIT_USAGE = 2
REPORT_FORMAT = "ternopu-run-report"


class CliError(TernopuError):
    """A command-line problem (bad value, missing file) reported without traceback."""


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False, disable=not console.is_terminal)


def _preset(name: str):
    from ternopu.golden.config import PRESETS

    aliases = {k.lower(): v for k, v in PRESETS.items()}
    aliases.update({k.lower().replace("-", "_"): v for k, v in PRESETS.items()})
    cfg = aliases.get(name.lower()) or aliases.get(name.lower().replace("-", "_"))
    if cfg is None:
        raise CliError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return cfg


def _overrides(args) -> dict:
    out = {}
    if args.kv_bits is not None:
        out["kv_bits"] = args.kv_bits
    if args.kv_group is not None:
        out["kv_group"] = args.kv_group
    if args.kv_residual is not None:
        out["kv_residual"] = args.kv_residual
    if args.routers is not None:
        out["routers"] = args.routers
    if args.router_threshold is not None:
        out["router_threshold"] = args.router_threshold
    if getattr(args, "max_pos", None) is not None:
        out["max_pos"] = args.max_pos
    return out


def _overlay(args):
    from ternopu.hw.overlay_config import OverlayConfig

    kw = {"board": args.board}
    if args.hbm_ports is not None:
        kw["hbm_ports"] = args.hbm_ports
    return OverlayConfig(**kw)


def _model(args):
    """(cfg, weights) from --model or --preset."""
    if args.model:
        from ternopu.golden.loaders import load_checkpoint

        if not Path(args.model).is_dir():
            raise CliError(f"--model {args.model}: no such checkpoint directory")
        return load_checkpoint(args.model, **_overrides(args))
    from ternopu.golden.reference import random_bitnet_weights, random_llama_weights, random_router_weights

    from ternopu.sw.compiler.plan import plan_memory

    cfg = _preset(args.preset)
    try:
        cfg = cfg.replace(**_overrides(args))
    except TypeError as e:
        raise CliError(str(e)) from None
    plan_memory(cfg, _overlay(args), context=args.context)  # fail fast, before generating weights
    if cfg.family == "bitnet":
        weights = random_bitnet_weights(cfg, args.seed)
    else:
        weights = random_llama_weights(cfg, args.seed, keep_float=False)
    if cfg.routers:
        weights.update(random_router_weights(cfg, args.seed + 1))
    return cfg, weights


def cmd_compile(args, console: Console) -> int:
    from ternopu.sw.compiler import build_image, write_image
    from ternopu.sw.compiler.plan import DEFAULT_PREFILL_CHUNK

    cfg, weights = _model(args)
    with _progress(console) as prog:
        task = prog.add_task(f"packing {cfg.name}", total=7 * cfg.layers + 2)
        image = build_image(cfg, weights, _overlay(args), context=args.context,
                            prefill_chunk=args.prefill_chunk or DEFAULT_PREFILL_CHUNK,
                            progress=lambda *_: prog.advance(task))
    out = write_image(image, args.out)
    s = image.plan.summary()
    console.print(f"wrote {out}: {cfg.name} ({cfg.family}, {cfg.kv_bits}-bit KV, routers={cfg.routers}), "
                  f"context {image.plan.context}, HBM used {s['used_bytes'] / 2**20:.1f} MiB of "
                  f"{s['capacity_bytes'] / 2**30:.0f} GiB, file {sum(c.size for c in image.channels) / 2**20:.1f} MiB")
    return 0


def _parse_prompt(text: str) -> list[int]:
    try:
        toks = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise CliError(f"--prompt must be comma-separated token ids, got {text!r}") from None
    if not toks:
        raise CliError("--prompt needs at least one token id")
    return toks


def _logits_digest(logits) -> str:
    h = hashlib.sha256()
    for t in logits:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def run_report(image, session, result, backend: str, prompt) -> dict:
    """The JSON run report (docs/compiler.md)."""
    plan, cfg = image.plan, image.cfg
    ports = plan.geo.ports
    decode = [p for p in result.programs if p.get("kind") == "decode"] or result.programs

    def port_totals(programs, kind):
        return [sum(p["counters"].get(f"HBM_{kind}_P{q}", 0) for p in programs) for q in range(ports)]

    rd_decode = sum(port_totals(decode, "RD")) / len(decode)
    board = plan.overlay.board_info
    peak = board.hbm_peak_bytes_per_s * ports / board.hbm_pseudo_channels
    clock = plan.overlay.clock_hz
    kv = session.kv_stats()
    per_prog = [{"kind": p.get("kind"), "positions": p["positions"], "instructions": p["instructions"],
                 "unit_instructions": p["unit_instructions"],
                 "executed_instructions": sum(v for k, v in p["counters"].items() if k.startswith("INSTR_")),
                 "skipped_instructions": p["counters"].get("SKIPPED_INSTRUCTIONS", 0),
                 "hbm_read_bytes": sum(v for k, v in p["counters"].items() if k.startswith("HBM_RD")),
                 "hbm_write_bytes": sum(v for k, v in p["counters"].items() if k.startswith("HBM_WR")),
                 "cycles": p["counters"].get("CYCLES"), "wall_seconds": p["wall_seconds"]}
                for p in result.programs]
    cycles = [p["cycles"] for p in per_prog if p["kind"] == "decode" and p["cycles"]]
    eff = None
    if cycles:
        eff = rd_decode / (sum(cycles) / len(cycles) / clock) / peak
    units = None
    if cycles:
        from ternopu.hw.isa import Unit

        dec = [p for p in decode if p["counters"].get("CYCLES")]
        units = {u.name: {kind: sum(p["counters"].get(f"{u.name}_{kind.upper()}", 0) for p in dec) / len(dec)
                          for kind in ("busy", "stall")} for u in Unit}
    return {
        "format": REPORT_FORMAT, "version": 1, "backend": backend,
        "model": {"name": cfg.name, "family": cfg.family, "layers": cfg.layers, "hidden": cfg.hidden,
                  "kv_bits": cfg.kv_bits, "routers": cfg.routers, "router_threshold": cfg.router_threshold},
        "prompt": list(prompt), "tokens": result.tokens,
        "logits_sha256": _logits_digest(result.logits),
        "programs": per_prog,
        "cycles_per_token": (sum(cycles) / len(cycles)) if cycles else None,
        "unit_cycles_per_token": units,
        "tokens_per_s_at_clock": clock / (sum(cycles) / len(cycles)) if cycles else None,
        "device": dict(getattr(session.device, "info", None) or {}),
        "cycles_note": None if cycles else f"the {backend} backend is functional: it counts instructions "
                                           "and bytes, not cycles",
        "bytes_per_port": {"read": port_totals(result.programs, "RD"), "write": port_totals(result.programs, "WR")},
        "decode_read_bytes_per_token": rd_decode,
        "bandwidth": {"clock_hz": clock, "peak_bytes_per_s": peak, "peak_bytes_per_cycle": peak / clock,
                      "bandwidth_bound_cycles_per_token": rd_decode / (peak / clock),
                      "bandwidth_bound_tokens_per_s": peak / rd_decode if rd_decode else None,
                      "efficiency": eff,
                      "note": "bytes read from HBM per decode token at stored precision (weights, "
                              "scales, KV, route history, instructions); bound = bytes / peak"},
        "kv": {"bytes_stored": kv.bytes_stored, "bytes_dense": kv.bytes_dense, "bytes_saved": kv.bytes_saved,
               "saved_fraction": kv.saved_fraction, "skipped_attn": kv.skipped_attn,
               "skipped_ffn": kv.skipped_ffn, "skipped_fraction": kv.skipped_fraction},
        "wall_seconds": result.seconds,
    }


def cmd_run(args, console: Console) -> int:
    from ternopu.sw.compiler import read_image
    from ternopu.sw.device import Session, open_device

    prompt = _parse_prompt(args.prompt)
    if args.tokens < 1:
        raise CliError(f"--tokens must be >= 1, got {args.tokens}")
    image = read_image(args.image)
    kw = {"xclbin": args.xclbin} if args.backend == "xrt" else {}
    if args.backend == "verilator":
        from ternopu.sw.backends.verilator import FAST_BUILD

        if args.max_cycles:
            kw["max_cycles"] = args.max_cycles
        if args.fast_build:
            kw["build_args"] = FAST_BUILD
    device = open_device(args.backend, **kw)
    with device, _progress(console) as prog:
        session = Session(device, image)
        task = prog.add_task(f"{args.backend}: decoding", total=args.tokens)
        result = session.generate(prompt, args.tokens, progress=lambda i, n: prog.update(task, completed=i))
        report = run_report(image, session, result, args.backend, prompt)
    console.print(f"tokens: {','.join(map(str, result.tokens))}")
    if args.report:
        path = Path(args.report)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)
        console.print(f"report: {path}")
    return 0


def _load_report(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{p}: no such report")
    try:
        rep = json.loads(p.read_text())
    except ValueError as e:
        raise CliError(f"{p}: not JSON ({e})") from None
    if not isinstance(rep, dict) or rep.get("format") != REPORT_FORMAT:
        raise CliError(f"{p}: not a ternopu run report (format {rep.get('format') if isinstance(rep, dict) else None!r})")
    return rep


def cmd_report(args, console: Console) -> int:
    print_report(_load_report(args.report), console)
    return 0


def print_report(rep: dict, console: Console) -> None:
    """Print a run report (:func:`run_report`) as tables: totals, bytes per port, cycles per unit."""
    m = rep["model"]
    t = Table(title=f"{m['name']} on {rep['backend']} ({m['family']}, {m['kv_bits']}-bit KV, routers={m['routers']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    bw = rep["bandwidth"]
    rows = [
        ("prompt / generated tokens", f"{len(rep['prompt'])} / {len(rep['tokens'])}"),
        ("generated ids", ",".join(map(str, rep["tokens"]))),
        ("cycles per token", "n/a (" + rep["cycles_note"] + ")" if rep["cycles_per_token"] is None
         else f"{rep['cycles_per_token']:.0f}"),
        ("modelled tokens/s", "-" if not rep.get("tokens_per_s_at_clock")
         else f"{rep['tokens_per_s_at_clock']:,.1f} @ {bw['clock_hz'] / 1e6:.0f} MHz"),
        ("HBM bytes read per decode token", f"{rep['decode_read_bytes_per_token']:,.0f}"),
        ("bandwidth-bound cycles/token", f"{bw['bandwidth_bound_cycles_per_token']:,.0f} @ {bw['clock_hz'] / 1e6:.0f} MHz"),
        ("bandwidth-bound tokens/s", f"{bw['bandwidth_bound_tokens_per_s']:,.0f}" if bw["bandwidth_bound_tokens_per_s"] else "-"),
        ("bandwidth efficiency", "n/a" if bw["efficiency"] is None else f"{bw['efficiency']:.1%}"),
        ("KV bytes stored / dense", f"{rep['kv']['bytes_stored']:,} / {rep['kv']['bytes_dense']:,}"),
        ("KV bytes saved", f"{rep['kv']['bytes_saved']:,} ({rep['kv']['saved_fraction']:.1%})"),
        ("blocks skipped (attn / ffn)", f"{rep['kv']['skipped_attn']} / {rep['kv']['skipped_ffn']} "
                                        f"({rep['kv']['skipped_fraction']:.1%})"),
        ("instructions per decode step", f"{rep['programs'][-1]['instructions']}"),
        ("wall time (host)", f"{rep['wall_seconds']:.1f} s"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    ports = Table(title="HBM bytes per port (whole run)")
    ports.add_column("port")
    ports.add_column("read", justify="right")
    ports.add_column("write", justify="right")
    for q, (r, w) in enumerate(zip(rep["bytes_per_port"]["read"], rep["bytes_per_port"]["write"])):
        if r or w:
            ports.add_row(str(q), f"{r:,}", f"{w:,}")
    console.print(ports)
    if rep.get("unit_cycles_per_token"):
        units = Table(title="cycles per decode token, per unit")
        units.add_column("unit")
        units.add_column("busy", justify="right")
        units.add_column("stall", justify="right")
        for u, v in rep["unit_cycles_per_token"].items():
            units.add_row(u, f"{v['busy']:,.0f}", f"{v['stall']:,.0f}")
        console.print(units)


def cmd_plan(args, console: Console) -> int:
    from ternopu.sw.compiler.plan import max_context, plan_memory

    cfg = _preset(args.preset)
    cfg = cfg.replace(**_overrides(args))
    overlay = _overlay(args)
    fit = max_context(cfg, overlay)
    if args.context and args.context > cfg.max_pos:
        raise CliError(f"--context {args.context} exceeds max_pos {cfg.max_pos}; raise it with --max-pos")
    plan = plan_memory(cfg, overlay, context=args.context, check_fit=False)
    s = plan.summary()
    t = Table(title=f"{cfg.name} on {overlay.board}: {cfg.kv_bits}-bit KV, context {plan.context}")
    t.add_column("region")
    t.add_column("MiB", justify="right")
    for k, v in sorted(s["categories"].items(), key=lambda kv: -kv[1]):
        t.add_row(k, f"{v / 2**20:.1f}")
    t.add_row("total", f"{s['used_bytes'] / 2**20:.1f}")
    console.print(t)
    console.print(f"fits: {max(plan.top) <= plan.geo.channel_bytes}; longest context that fits "
                  f"(<= max_pos {cfg.max_pos}): {fit}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ternopu", description="ternopu compiler and runtime")
    sub = p.add_subparsers(dest="command", required=True)

    def model_opts(sp, need_source: bool):
        if need_source:
            src = sp.add_mutually_exclusive_group(required=True)
            src.add_argument("--model", help="checkpoint directory (HF BitNet / GPTQ / AWQ / float Llama)")
            src.add_argument("--preset", help="preset name (random weights), e.g. bitnet-tiny")
        sp.add_argument("--seed", type=int, default=0, help="seed of the random preset weights")
        sp.add_argument("--kv-bits", type=int, choices=(16, 4, 2), default=None)
        sp.add_argument("--kv-group", type=int, default=None)
        sp.add_argument("--kv-residual", type=int, default=None)
        sp.add_argument("--routers", action=argparse.BooleanOptionalAction, default=None)
        sp.add_argument("--router-threshold", type=float, default=None)
        sp.add_argument("--max-pos", type=int, default=None, help="override the model's max_pos")
        sp.add_argument("--board", default="u280", choices=("u280", "v80"))
        sp.add_argument("--hbm-ports", type=int, default=None)
        sp.add_argument("--context", type=int, default=None, help="tokens of KV to plan (default max_pos)")

    c = sub.add_parser("compile", help="model -> HBM image")
    model_opts(c, True)
    c.add_argument("--out", required=True, help="image directory to write")
    c.add_argument("--prefill-chunk", type=int, default=None, help="prompt tokens per prefill program")
    c.set_defaults(func=cmd_compile)

    r = sub.add_parser("run", help="greedy decoding of an image on a backend")
    r.add_argument("--image", required=True)
    r.add_argument("--backend", default="golden", choices=("golden", "verilator", "xrt"))
    r.add_argument("--prompt", required=True, help="comma-separated token ids")
    r.add_argument("--tokens", type=int, default=16)
    r.add_argument("--report", help="write the JSON run report here")
    r.add_argument("--xclbin", help="overlay xclbin (xrt backend)")
    r.add_argument("--max-cycles", type=int, default=None, help="cycle bound of one program (verilator backend)")
    r.add_argument("--fast-build", action="store_true",
                   help="verilator backend: unoptimized simulator (quick to build, ~15x slower per cycle)")
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="print a JSON run report as tables")
    rep.add_argument("report")
    rep.set_defaults(func=cmd_report)

    pl = sub.add_parser("plan", help="memory plan of a preset: what fits, longest context")
    pl.add_argument("--preset", required=True)
    model_opts(pl, False)
    pl.set_defaults(func=cmd_plan)
    return p


def main(argv=None) -> int:
    """Entry point of the ``ternopu`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False, soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    t0 = time.perf_counter()
    try:
        rc = args.func(args, console)
    except (TernopuError, OSError) as e:
        err.print(Text("error: ", style="bold red") + Text(str(e)), highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    if args.command in ("compile", "run"):
        console.print(f"done in {time.perf_counter() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
