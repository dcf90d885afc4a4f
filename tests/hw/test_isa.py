"""The ISA definition, its Python encoder/decoder/assembler, and the RTL InstructionDecoder."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from ternopu.golden.errors import FormatError
from ternopu.hw import isa
from ternopu.hw.isa import (
    Assembler, Block, ErrorCode, IllegalInstruction, Instruction, NpeOp, Unit, check_word, decode,
    disassemble, encode, encode_program,
)

# --------------------------------------------------------------------------------------------
# Definition sanity
# --------------------------------------------------------------------------------------------


def test_every_opcode_fits_and_layout_matches_definition():
    for op in isa.OPCODES:
        lay = isa.opcode_layout(op)
        assert lay.size == isa.INSTR_BITS
        offs = op.offsets()
        assert offs["opcode"] == (0, 8) and offs["wait"] == (8, 6) and offs["release"] == (14, 6)
        pos = isa.HEADER_BITS
        for f in op.fields:  # packed in declaration order, no gaps
            assert offs[f.name] == (pos, f.width)
            pos += f.width
        if pos < isa.INSTR_BITS:
            assert offs["reserved"] == (pos, isa.INSTR_BITS - pos)
        names = [f.name for f in op.fields]
        assert len(set(names)) == len(names)
    assert isa.INSTRUCTION_LAYOUT.size == isa.INSTR_BITS
    assert 0 not in isa.OPCODE_BY_NUMBER
    assert {o.unit for o in isa.OPCODES} == set(Unit)


def test_required_opcodes_present():
    for name in ["NOP", "LOAD", "STORE", "TLMM", "PE_LINEAR", "PE_ATTN", "NPE", "ROUTER", "SKIP_IF",
                 "KV_APPEND", "KV_PREFETCH", "SYNC", "END"]:
        assert name in isa.OPCODE_BY_NAME
    assert {op.name for op in NpeOp} >= {"RMSNORM", "SOFTMAX", "RELU2_GLU", "SWIGLU", "ROPE",
                                         "RESIDUAL_ADD", "ACT_QUANT_INT8", "TO_FP16"}


def test_addresses_and_buffer_offsets_are_bus_aligned():
    for op in isa.OPCODES:
        for f in op.fields:
            if f.kind == "addr" or f.name.endswith("_off") or f.name == "stride":
                assert f.align == isa.BUS_BYTES, (op.name, f.name)
            if f.kind == "addr":
                assert f.width == isa.HBM_ADDR_BITS


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


def _legal_value(f: isa.Field):
    lo = -(-f.min // f.align)
    return st.integers(lo, f.max // f.align).map(lambda v: v * f.align)


@st.composite
def legal_instructions(draw):
    op = draw(st.sampled_from(isa.OPCODES))
    values = {f.name: draw(_legal_value(f)) for f in op.fields}
    own = ~(1 << int(op.unit)) & 0x3F
    wait = draw(st.integers(0, 63)) & own
    release = draw(st.integers(0, 63)) & own
    return Instruction(op.name, values, wait, release)


def _near_legal_word(rng: random.Random) -> int:
    """A word of an assigned opcode with random (often illegal) field bits and masks."""
    op = rng.choice(isa.OPCODES)
    offs = op.offsets()
    word = op.number | rng.getrandbits(6) << 8 | rng.getrandbits(6) << 14
    for f in op.fields:
        r = rng.random()
        if r < 0.7:
            v = rng.randint(-(-f.min // f.align), f.max // f.align) * f.align
        elif r < 0.8:
            v = rng.choice([f.min, f.max, max(f.min - 1, 0), min(f.max + 1, (1 << f.width) - 1)])
        else:
            v = rng.getrandbits(f.width)
        word |= v << offs[f.name][0]
    if "reserved" in offs and rng.random() < 0.15:
        word |= 1 << rng.randrange(offs["reserved"][0], isa.INSTR_BITS)
    return word


# --------------------------------------------------------------------------------------------
# Python encoder / decoder
# --------------------------------------------------------------------------------------------


@given(legal_instructions())
@settings(max_examples=300)
def test_encode_decode_roundtrip(instr):
    word = encode(instr)
    assert 0 <= word < 1 << isa.INSTR_BITS
    assert word & 0xFF == isa.OPCODE_BY_NAME[instr.opcode].number
    assert decode(word) == instr
    assert decode(word.to_bytes(32, "little")) == instr
    assert check_word(word) == ErrorCode.NONE


def test_program_is_little_endian_words():
    prog = [Instruction.make("NOP"), Instruction.make("END")]
    raw = encode_program(prog)
    assert len(raw) == 64
    assert raw[0] == isa.Opcode.NOP and raw[32] == isa.Opcode.END
    assert isa.decode_program(raw) == prog


def test_known_encoding_load():
    # hand-computed from the documented layout: fields packed from bit 20 in declaration order
    i = Instruction.make("LOAD", hbm_addr=0x3_0000_0020, port=5, nports=3, bursts=2, burst_len=256,
                         stride=64, dst_buf=6, dst_off=0x1_0000, wait="TLMM", release="ST|NPE")
    w = encode(i)
    assert w & 0xFF == 0x10
    assert (w >> 8) & 0x3F == 1 << Unit.TLMM
    assert (w >> 14) & 0x3F == (1 << Unit.ST) | (1 << Unit.NPE)
    assert (w >> 20) & ((1 << 34) - 1) == 0x3_0000_0020
    assert (w >> 54) & 31 == 5
    assert (w >> 59) & 63 == 3
    assert (w >> 65) & 0xFFFF == 2
    assert (w >> 81) & 0x1FF == 256
    assert (w >> 90) & 0xFFFFFFFF == 64
    assert (w >> 122) & 7 == 6
    assert (w >> 125) & 0xFFFFF == 0x1_0000
    assert w >> 145 == 0


@pytest.mark.parametrize("op", isa.OPCODES, ids=lambda o: o.name)
def test_each_field_range_and_alignment_rejected(op):
    base = Instruction.make(op.name)
    assert check_word(encode(base)) == ErrorCode.NONE
    offs = op.offsets()
    for f in op.fields:
        bad_values = []
        if f.min > 0:
            bad_values.append((f.min - 1, ErrorCode.FIELD_RANGE))
        if f.max < (1 << f.width) - 1:
            bad_values.append((f.max + 1, ErrorCode.FIELD_RANGE))
            bad_values.append(((1 << f.width) - 1, ErrorCode.FIELD_RANGE))
        if f.align > 1:
            bad_values.append((f.default + f.align // 2, ErrorCode.MISALIGNED))
        for v, code in bad_values:
            with pytest.raises(IllegalInstruction, match=f"{code.name}: {op.name}.{f.name}") as ei:
                encode(Instruction.make(op.name, **{f.name: v}))
            assert ei.value.code == code and ei.value.field == f.name
            word = encode(base) & ~(((1 << f.width) - 1) << offs[f.name][0]) | v << offs[f.name][0]
            assert check_word(word) == code
            with pytest.raises(IllegalInstruction, match=code.name):
                decode(word)


def test_value_wider_than_field_rejected():
    with pytest.raises(IllegalInstruction, match="does not fit 5 bits"):
        encode(Instruction.make("LOAD", port=32))
    with pytest.raises(IllegalInstruction, match="wait mask 0x40 does not fit"):
        encode(Instruction("NOP", {}, wait=0x40))


def test_unknown_field_and_opcode_rejected():
    with pytest.raises(FormatError, match="LOAD has no field 'rows'; fields: \\['hbm_addr'"):
        Instruction.make("LOAD", rows=3)
    with pytest.raises(FormatError, match="has no field"):
        encode(Instruction("LOAD", {"rows": 3}))
    with pytest.raises(KeyError, match="no field 'rows'"):
        isa.OPCODE_BY_NAME["LOAD"].field("rows")
    with pytest.raises(IllegalInstruction, match="unknown opcode name 'FOO'"):
        Instruction.make("FOO")


def test_illegal_opcodes():
    for number in range(256):
        word = number
        if number in isa.OPCODE_BY_NUMBER:
            continue
        assert check_word(word) == ErrorCode.ILLEGAL_OPCODE
        with pytest.raises(IllegalInstruction, match=f"opcode {number:#04x} is not assigned"):
            decode(word)
    assert check_word(0) == ErrorCode.ILLEGAL_OPCODE  # zeroed memory stops the overlay


def test_reserved_bits_rejected():
    w = encode(Instruction.make("END")) | 1 << 255
    with pytest.raises(IllegalInstruction, match=r"RESERVED_BITS: END: reserved bits \[20, 256\).*lowest set bit 255"):
        decode(w)


def test_dependency_on_own_queue_rejected():
    with pytest.raises(IllegalInstruction, match="DEPENDENCY: LOAD runs on LD; its wait mask LD"):
        encode(Instruction.make("LOAD", wait="LD"))
    with pytest.raises(IllegalInstruction, match="its release mask PE"):
        encode(Instruction.make("ROUTER", release="PE"))
    assert check_word(encode(Instruction.make("END")) | 1 << (14 + Unit.CTRL)) == ErrorCode.DEPENDENCY


def test_error_priority():
    op = isa.OPCODE_BY_NAME["LOAD"]
    offs = op.offsets()
    base = encode(Instruction.make("LOAD"))
    misaligned = base | 1 << offs["hbm_addr"][0]
    assert check_word(misaligned) == ErrorCode.MISALIGNED
    both = misaligned & ~(0x1FF << offs["burst_len"][0])  # burst_len = 0: out of range too
    assert check_word(both) == ErrorCode.FIELD_RANGE
    assert check_word(both | 1 << (8 + Unit.LD)) == ErrorCode.FIELD_RANGE
    assert check_word(both | 1 << 200) == ErrorCode.RESERVED_BITS
    assert check_word(misaligned | 1 << (8 + Unit.LD)) == ErrorCode.MISALIGNED


def test_decode_input_checks():
    with pytest.raises(FormatError, match="an instruction is 32 bytes, got 16"):
        decode(bytes(16))
    with pytest.raises(FormatError, match="unsigned 256-bit integer"):
        decode(1 << 256)
    with pytest.raises(FormatError, match="multiple of 32 bytes, got 33"):
        isa.decode_program(bytes(33))
    with pytest.raises(FormatError, match="multiple of 32 bytes, got 1"):
        disassemble(b"\x01")
    bad = encode_program([Instruction.make("NOP")]) + bytes(32)
    with pytest.raises(IllegalInstruction, match="pc 1: opcode 0x00"):
        isa.decode_program(bad)


def test_unit_mask_and_float_helpers():
    assert isa.unit_mask("LD", Unit.PE, 5) == 0b101001
    with pytest.raises(FormatError, match="unknown unit 'XX'"):
        isa.unit_mask("XX")
    with pytest.raises(FormatError, match="unit number must be in 0..5, got 6"):
        isa.unit_mask(6)
    assert isa.f32_bits(1.0) == 0x3F800000 and isa.bits_f32(0xBF800000) == -1.0
    with pytest.raises(IllegalInstruction, match="TLMM.g127"):
        encode(Instruction.make("TLMM", g127=isa.f32_bits(float("inf"))))
    with pytest.raises(IllegalInstruction, match="TLMM.g127"):
        encode(Instruction.make("TLMM", g127=isa.f32_bits(-0.5)))


# --------------------------------------------------------------------------------------------
# Assembler / disassembler
# --------------------------------------------------------------------------------------------


def _layer_program():
    asm = Assembler()
    asm.emit("ROUTER", layer=3, block=Block.ATTN, dim=2560, w_addr=0x4000,
             threshold=isa.f32_bits(0.25), release="CTRL")
    skip = asm.emit("SKIP_IF", layer=3, block=Block.ATTN, sense=1, count="attn_end", wait="PE")
    asm.load(hbm_addr=0x10000, bursts=4, burst_len=64, stride=0x800, nports=4, release="PE")
    asm.emit("PE_ATTN", layer=3, tokens=17, kv_addr=0x2000_0000, wait="LD", release="NPE")
    asm.emit("NPE", subop=NpeOp.SOFTMAX, length=17, wait="PE")
    asm.label("attn_end")
    asm.emit("SYNC", queues=isa.unit_mask("PE", "NPE"))
    asm.emit("END")
    return asm, skip


def test_assembler_resolves_labels():
    asm, skip = _layer_program()
    prog = asm.instructions()
    assert prog[skip].fields["count"] == 3
    raw = asm.assemble()
    assert len(raw) == 7 * 32 and isa.decode_program(raw) == prog


def test_assembler_errors():
    asm = Assembler()
    asm.emit("SKIP_IF", count="nowhere")
    with pytest.raises(FormatError, match="undefined label 'nowhere'"):
        asm.assemble()
    asm = Assembler()
    asm.label("top")
    asm.emit("SKIP_IF", count="top")
    with pytest.raises(FormatError, match="can only skip forward"):
        asm.assemble()
    with pytest.raises(FormatError, match="defined twice"):
        asm.label("top")
    with pytest.raises(FormatError, match="only SKIP_IF count may be a label"):
        asm.emit("LOAD", bursts="x")
    with pytest.raises(IllegalInstruction, match="MISALIGNED: LOAD.hbm_addr"):
        asm.emit("LOAD", hbm_addr=7)
    with pytest.raises(AttributeError):
        asm.frobnicate()
    asm = Assembler()
    asm.emit("SKIP_IF", count="far")
    for _ in range(4096):
        asm.emit("NOP")
    asm.label("far")
    with pytest.raises(IllegalInstruction, match="FIELD_RANGE: SKIP_IF.count = 4096 does not fit 12 bits"):
        asm.assemble()


def test_disassembler_listing():
    asm, _ = _layer_program()
    text = disassemble(asm.assemble() + (1 << 255 | 2).to_bytes(32, "little"))
    lines = text.splitlines()
    assert len(lines) == 8
    assert lines[0].startswith("    0: ROUTER      layer=3 block=ATTN") and "threshold=0.25" in lines[0]
    assert "release=CTRL" in lines[0]
    assert "SKIP_IF     layer=3 block=ATTN sense=1 count=3 wait=PE" in lines[1]
    assert "hbm_addr=0x10000" in lines[2] and "release=PE" in lines[2]
    assert "subop=SOFTMAX" in lines[4]
    assert "queues=PE|NPE" in lines[5]
    assert lines[7].startswith("    7: .word 0x8000") and "illegal RESERVED_BITS" in lines[7]


# --------------------------------------------------------------------------------------------
# RTL decoder vs the Python decoder
# --------------------------------------------------------------------------------------------


def run_rtl_decoder(words: list[int], seed: int = 0, gap_p: float = 0.3, stall_p: float = 0.3,
                    with_views: bool = False):
    """Stream ``words`` through the InstructionDecoder with random gaps / stalls; return outputs."""
    dut = isa.InstructionDecoder()
    rng = random.Random(seed)
    got = []
    views = []

    async def producer(ctx):
        for w in words:
            while rng.random() < gap_p:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, w)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while len(got) < len(words):
            ctx.set(dut.o.ready, rng.random() >= stall_p)
            _, _, valid, ready, payload = await ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload)
            if valid and ready:
                got.append((ErrorCode(payload.error), Unit(payload.unit), payload.instr.bits))
                views.append(payload.instr)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-8 * (len(words) * 8 + 100))
    assert len(got) == len(words), f"decoder delivered {len(got)} of {len(words)} words"
    if with_views:
        return got, views
    return got


def _expected(word: int):
    code = check_word(word)
    unit = isa.OPCODE_BY_NUMBER[word & 0xFF].unit if code == ErrorCode.NONE else None
    return code, unit


def _compare(words, got):
    for w, (code, unit, bits) in zip(words, got):
        exp_code, exp_unit = _expected(w)
        assert bits == w
        assert code == exp_code, f"word {w:#066x}: RTL {code.name}, Python {exp_code.name}"
        if exp_unit is not None:
            assert unit == exp_unit


def test_rtl_every_opcode_and_error_class():
    words = []
    for op in isa.OPCODES:
        base = Instruction.make(op.name)
        maxed = Instruction(op.name, {f.name: f.max // f.align * f.align for f in op.fields},
                            wait=0x3F & ~(1 << op.unit), release=0x3F & ~(1 << op.unit))
        words += [encode(base), encode(maxed), encode(base) | 1 << (8 + op.unit),
                  encode(base) | 1 << (14 + op.unit), encode(base) | 1 << 255]
        offs = op.offsets()
        for f in op.fields:
            for v in {f.min - 1, f.max + 1, f.default + f.align // 2, (1 << f.width) - 1} - {-1}:
                if v < 1 << f.width:
                    words.append(encode(base) & ~(((1 << f.width) - 1) << offs[f.name][0]) | v << offs[f.name][0])
    words += [0, 0xFF, 0x05, (1 << 256) - 1]
    got = run_rtl_decoder(words, seed=1)
    _compare(words, got)
    seen = {c for c, _, _ in got}
    assert seen == {ErrorCode.NONE, *isa.DECODE_ERRORS}


@given(st.lists(legal_instructions(), min_size=1, max_size=30))
@settings(max_examples=8)
def test_rtl_decodes_legal_instructions(instrs):
    words = [encode(i) for i in instrs]
    got, views = run_rtl_decoder(words, seed=len(words), with_views=True)
    for instr, (code, unit, bits), view in zip(instrs, got, views):
        assert code == ErrorCode.NONE and unit == instr.unit and decode(bits) == instr
        # the decoded union, read through the opcode's struct layout, holds the same fields
        struct_view = getattr(view, instr.opcode.lower())
        assert struct_view.opcode == instr.op.number and struct_view.wait == instr.wait
        for name, value in instr.fields.items():
            assert getattr(struct_view, name) == value, (instr.opcode, name)


def test_rtl_random_words_match_python():
    rng = random.Random(2026)
    words = [_near_legal_word(rng) for _ in range(600)] + [rng.getrandbits(256) for _ in range(150)]
    words += [rng.getrandbits(256) & ~0xFF | rng.choice(list(isa.OPCODE_BY_NUMBER)) for _ in range(50)]
    got = run_rtl_decoder(words, seed=3, gap_p=0.1, stall_p=0.1)
    _compare(words, got)
    codes = [c for c, _, _ in got]
    for c in [ErrorCode.NONE, *isa.DECODE_ERRORS]:
        assert codes.count(c) >= 10, (c, codes.count(c))


# --------------------------------------------------------------------------------------------
# Generated documentation
# --------------------------------------------------------------------------------------------


def test_committed_isa_doc_is_up_to_date():
    from ternopu.hw import docs

    committed = (docs.DOCS_DIR / "isa.md").read_text()
    assert committed == docs.isa_markdown(), "docs/isa.md is stale: run `python -m ternopu.hw.docs`"
    for op in isa.OPCODES:
        assert f"### {op.name}" in committed and f"0x{op.number:02X}" in committed
    assert "| [53:20] | hbm_addr | 34 | 0x0..0x3ffffffff; multiple of 32 |" in committed


# --------------------------------------------------------------------------------------------
# Real model shapes: one decode layer of BitNet b1.58 2B4T and of Llama-2-7B as programs
# --------------------------------------------------------------------------------------------

MB = 1 << 20


def _bitnet_2b4t_layer(asm: Assembler, layer: int, pos: int):
    hidden, ffn, heads, kv_heads, head_dim = 2560, 6912, 20, 5, 128
    g127 = isa.f32_bits(0.8 / 127)
    wbase = 0x1_0000_0000 + layer * 64 * MB
    asm.emit("ROUTER", layer=layer, block=Block.ATTN, dim=hidden, w_addr=wbase, release="CTRL")
    asm.emit("SKIP_IF", layer=layer, block=Block.ATTN, sense=1, count=f"attn{layer}", wait="PE")
    asm.emit("NPE", subop=NpeOp.RMSNORM, length=hidden, param_addr=wbase + MB, dst_buf=1)
    asm.emit("NPE", subop=NpeOp.ACT_QUANT_INT8, a_buf=1, length=hidden, dst_buf=2, release="TLMM")
    for k, rows in enumerate([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]):  # q, k, v
        asm.emit("TLMM", w_addr=wbase + (2 + k) * 4 * MB, nports=8, rows=rows, cols=hidden,
                 src_buf=2, amax_buf=2, amax_off=hidden, dst_buf=3, dst_off=k * 16384, g127=g127,
                 reuse_act=int(k > 0), wait="NPE" if k == 0 else 0, release="NPE" if k == 2 else 0)
    asm.emit("NPE", subop=NpeOp.ROPE, a_buf=3, length=(heads + kv_heads) * head_dim, pos=pos,
             head_dim=head_dim, param_addr=0x8000_0000, dst_buf=3, wait="TLMM", release="ST")
    for h in range(kv_heads):
        asm.emit("KV_APPEND", layer=layer, kv_head=h, token=pos, head_dim=head_dim, k_buf=3,
                 k_off=heads * head_dim * 4 + h * 256, v_buf=3, v_off=16384 * 2 + h * 256,
                 kv_addr=0x2_0000_0000 + (layer * kv_heads + h) * 4 * MB, port=h,
                 wait="NPE" if h == 0 else 0, release="PE" if h == kv_heads - 1 else 0)
    asm.emit("PE_ATTN", phase=isa.AttnPhase.QK, layer=layer, kv_head=0, tokens=pos + 1,
             kv_addr=0x2_0000_0000, src_buf=3, dst_buf=4, wait="ST", release="NPE")
    asm.emit("NPE", subop=NpeOp.SOFTMAX, a_buf=4, length=pos + 1, dst_buf=4, wait="PE", release="PE")
    asm.emit("PE_ATTN", phase=isa.AttnPhase.PV, layer=layer, kv_head=0, tokens=pos + 1,
             kv_addr=0x2_0000_0000, src_buf=4, dst_buf=5, wait="NPE")
    asm.label(f"attn{layer}")
    asm.emit("TLMM", w_addr=wbase + 20 * MB, nports=8, rows=ffn, cols=hidden, g127=g127)    # gate
    asm.emit("TLMM", w_addr=wbase + 28 * MB, nports=8, rows=ffn, cols=hidden, g127=g127,    # up
             reuse_act=1)
    asm.emit("TLMM", w_addr=wbase + 36 * MB, nports=8, rows=hidden, cols=ffn, g127=g127,    # down
             release="CTRL")


def _llama2_7b_layer(asm: Assembler, layer: int, pos: int):
    hidden, ffn = 4096, 11008
    wbase = 0x4000_0000 + layer * 128 * MB
    for k, (rows, cols) in enumerate([(3 * hidden, hidden), (hidden, hidden), (2 * ffn, hidden),
                                      (hidden, ffn)]):
        asm.emit("PE_LINEAR", w_addr=wbase + k * 32 * MB, nports=32, rows=rows, cols=cols,
                 group_log2=7, scale_addr=wbase + k * 32 * MB + 24 * MB,
                 zero_addr=wbase + k * 32 * MB + 28 * MB, src_buf=1, dst_buf=2)
    asm.emit("PE_ATTN", phase=isa.AttnPhase.QK, kv_fmt=isa.KvFormat.KIVI2, layer=layer, kv_head=31,
             tokens=pos + 1, resid_tokens=32, kv_addr=0x3_0000_0000, nports=32, hist=1)


def test_real_model_layer_programs():
    asm = Assembler()
    for layer in range(2):
        _bitnet_2b4t_layer(asm, layer, pos=4095)
    asm.emit("TLMM", w_addr=0x3_8000_0000, nports=32, rows=128256, cols=2560,  # LM head
             g127=isa.f32_bits(1 / 127), wait="CTRL")
    for layer in range(2):
        _llama2_7b_layer(asm, layer, pos=4095)
    asm.emit("PE_LINEAR", w_addr=0x3_C000_0000, nports=32, rows=32000, cols=4096, group_log2=7,
             scale_addr=0x3_E000_0000, zero_addr=0x3_F000_0000)
    asm.emit("SYNC", queues=0b11111)
    asm.emit("END")
    prog = asm.instructions()
    raw = asm.assemble()
    assert len(raw) == 32 * len(prog) and isa.decode_program(raw) == prog
    skips = [i for i in prog if i.opcode == "SKIP_IF"]
    assert [s["count"] for s in skips] == [14, 14]  # the attention block of each BitNet layer
    listing = disassemble(raw)
    assert "rows=128256 cols=2560" in listing and "rows=11008" not in listing
    assert "rows=22016 cols=4096 group_log2=7" in listing and "kv_fmt=KIVI2" in listing
    # sizes just past the fields' limits are refused
    with pytest.raises(IllegalInstruction, match="TLMM.rows"):
        encode(Instruction.make("TLMM", rows=1 << 17))
    with pytest.raises(IllegalInstruction, match="PE_LINEAR.group_log2"):
        encode(Instruction.make("PE_LINEAR", group_log2=8))


def test_compiler_operands_isa_1_1():
    """Operands the compiler added in ISA 1.1 (additive: older words decode the same)."""
    assert (isa.ISA_VERSION_MAJOR, isa.ISA_VERSION_MINOR) == (1, 1)
    op = isa.OPCODE_BY_NAME["MASK_STORE"]
    assert op.unit == Unit.ST and op.number == 0x22
    i = Instruction.make("MASK_STORE", hbm_addr=0x1_0000_0020, layers=30, wait="PE")
    assert decode(encode(i)) == i
    with pytest.raises(IllegalInstruction, match="MASK_STORE.layers"):
        encode(Instruction.make("MASK_STORE", layers=0))
    with pytest.raises(IllegalInstruction, match="MISALIGNED: MASK_STORE.hbm_addr"):
        encode(Instruction.make("MASK_STORE", hbm_addr=0x10))
    lm = Instruction.make("PE_LINEAR", rows=32000, cols=4096, wfmt=isa.WeightFormat.FP16)
    assert decode(encode(lm))["wfmt"] == isa.WeightFormat.FP16
    attn = Instruction.make("PE_ATTN", tokens=7, desc_addr=0x40, scale=isa.f32_bits(0.125))
    assert "scale=0.125" in isa.format_instruction(decode(encode(attn)))
    npe = Instruction.make("NPE", subop=NpeOp.TO_FP32, fmt=isa.ElemFormat.BF16, eps=isa.f32_bits(1e-5))
    assert decode(encode(npe))["fmt"] == isa.ElemFormat.BF16
    with pytest.raises(IllegalInstruction, match="FIELD_RANGE: NPE.fmt"):
        encode(Instruction.make("NPE", fmt=3))
    # a word without the new fields (all zero above the old fields) decodes to their defaults
    old = encode(Instruction.make("KV_APPEND", head_dim=128))
    assert decode(old)["desc_addr"] == 0
