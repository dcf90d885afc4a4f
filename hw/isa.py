"""The overlay's instruction set, defined once: encoder, decoder, assembler, RTL layouts and decoder.

Everything about an instruction -- its opcode number, the unit (queue) that executes it, its fields
with their bit positions, widths, allowed ranges and alignments -- is declared in :data:`OPCODES`.
The Python encoder/decoder, the :class:`Assembler`, the disassembler, the ``amaranth.lib.data``
layouts, the RTL :class:`InstructionDecoder` and the generated documentation (``docs/isa.md``,
``python -m ternopu.hw.docs``) all read that one table; nothing below hand-writes a bit shift.

Instruction word
----------------
* Width :data:`INSTR_BITS` = 256 bits = :data:`INSTR_BYTES` = 32 bytes: exactly one beat of the
  U280's 256-bit HBM AXI ports, so the fetch unit reads one instruction per beat. (128 bits do not
  hold an INT4 linear layer's weight, scale and zero addresses at 34 bits each plus shapes and
  buffer references; a second beat per instruction would cost more than the unused bits.)
* In memory: little endian. Bit ``i`` of the word is bit ``i % 8`` of byte ``i // 8``; a program
  is the concatenation of its words, instruction ``pc`` at byte ``32 * pc`` of the program.
* Header, common to every opcode: ``opcode`` bits [0, 8), ``wait`` bits [8, 14), ``release`` bits
  [14, 20). The opcode's operand fields follow from bit 20 upward, packed in the order of their
  declaration; every bit above the last field is *reserved* and must be zero.
* Opcode 0x00 is deliberately unassigned, so running into zeroed memory stops with
  ``ILLEGAL_OPCODE`` instead of executing no-ops.

Field values are unsigned integers stored as is (no "minus one" encodings). A field declares an
allowed range ``[min, max]`` and an alignment ``align`` (value % align == 0). Floating-point operands
are stored as IEEE binary32 bit patterns (``kind == "f32"``).

Legality and error codes
------------------------
A word is legal when (checked in this priority order; the first class that fails gives the error
code, identical in :func:`check_word` and the RTL :class:`InstructionDecoder`):

1. its opcode is assigned (else :attr:`ErrorCode.ILLEGAL_OPCODE`);
2. its reserved bits are zero (else :attr:`ErrorCode.RESERVED_BITS`);
3. every field lies in ``[min, max]`` (else :attr:`ErrorCode.FIELD_RANGE`);
4. every field is a multiple of its ``align`` (else :attr:`ErrorCode.MISALIGNED`); HBM byte
   addresses, HBM strides and on-chip buffer offsets are aligned to the bus width
   :data:`BUS_BYTES` = 32 bytes;
5. neither ``wait`` nor ``release`` names the instruction's own unit (else
   :attr:`ErrorCode.DEPENDENCY`).

Rules that involve run-time state or several fields (an address range running past the end of HBM
or of a buffer, ``K`` not a multiple of the group size, a token counter overflow, a wait that never
completes) are checked by the executing unit and reported with the run-time error codes of
:class:`ErrorCode` (``HBM_RANGE``, ``BUF_RANGE``, ``SHAPE``, ``TOKEN_OVERFLOW``, ``WATCHDOG``,
``AXI_RESP``, ``PC_RANGE``). The CSR block shows the first error's code and program counter.

Queues and dependency tokens
----------------------------
See :data:`DEPENDENCY_SEMANTICS` (also rendered into ``docs/isa.md``).
"""

from __future__ import annotations

import enum as py_enum
import struct
from dataclasses import dataclass, field as dc_field
from typing import Iterable, Mapping

from amaranth import C, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import FormatError

__all__ = [
    "ISA_VERSION_MAJOR", "ISA_VERSION_MINOR", "INSTR_BITS", "INSTR_BYTES", "OPCODE_BITS",
    "MASK_BITS", "HEADER_BITS", "HBM_ADDR_BITS", "BUS_BYTES", "HBM_PORTS", "NUM_BUFFERS",
    "BUF_ID_BITS", "BUF_OFFSET_BITS", "MAX_LAYERS", "TOKEN_DEPTH", "TOKEN_COUNTER_BITS",
    "Unit", "ErrorCode", "Block", "KvFormat", "NpeOp", "AttnPhase", "ElemFormat", "WeightFormat", "Field", "OpcodeDef",
    "OPCODES", "OPCODE_BY_NAME", "OPCODE_BY_NUMBER", "Opcode", "Instruction", "IllegalInstruction",
    "unit_mask", "f32_bits", "bits_f32", "encode", "encode_program", "check_word", "decode",
    "decode_program", "disassemble", "Assembler", "HEADER_LAYOUT", "INSTRUCTION_LAYOUT",
    "DECODED_LAYOUT", "opcode_layout", "InstructionDecoder", "DEPENDENCY_SEMANTICS",
    "NUM_UNITS", "MAX_BURST_BEATS", "HIST_OFFSET_BITS", "LAYER_BITS", "ERROR_DESCRIPTIONS",
    "DECODE_ERRORS", "format_instruction",
]

# --------------------------------------------------------------------------------------------
# Format parameters (defined once; the CSR block, docs and the rest of the overlay import them)
# --------------------------------------------------------------------------------------------

#: ISA version, shown in the CSR ``VERSION`` register. Bump the major number on any change to an
#: existing encoding, the minor number when opcodes or fields are only added.
ISA_VERSION_MAJOR = 1
ISA_VERSION_MINOR = 1

#: Instruction width: one 256-bit HBM AXI beat.
INSTR_BITS = 256
INSTR_BYTES = INSTR_BITS // 8
OPCODE_BITS = 8
#: One wait / release bit per unit queue (see :class:`Unit`).
MASK_BITS = 6
HEADER_BITS = OPCODE_BITS + 2 * MASK_BITS

#: HBM byte addresses: 34 bits (16 GiB: the U280's 8 GiB HBM2 and the Versal HBM parts).
HBM_ADDR_BITS = 34
#: AXI data width of an HBM port in bytes; HBM addresses, strides and buffer offsets align to it.
BUS_BYTES = 32
#: AXI master ports to HBM pseudo-channels (U280: 32).
HBM_PORTS = 32
#: Largest AXI4 burst in beats.
MAX_BURST_BEATS = 256
#: On-chip scratch buffers, addressed by id + byte offset.
BUF_ID_BITS = 3
NUM_BUFFERS = 1 << BUF_ID_BITS
BUF_OFFSET_BITS = 20
#: KV history buffer (URAM) byte offsets.
HIST_OFFSET_BITS = 25
#: Layers addressable by ROUTER / SKIP_IF / KV instructions; routing bitmask has 2 bits per layer.
LAYER_BITS = 8
MAX_LAYERS = 1 << LAYER_BITS
#: Dependency token counter per (producer, consumer) queue pair.
TOKEN_COUNTER_BITS = 4
TOKEN_DEPTH = (1 << TOKEN_COUNTER_BITS) - 1
#: Largest binary32 bit pattern of a positive finite number.
F32_MAX_FINITE_BITS = 0x7F7FFFFF


class Unit(enum.IntEnum, shape=3):
    """Execution unit = instruction queue. Bit ``u`` of a wait/release mask names unit ``u``."""

    LD = 0      #: HBM -> on-chip loads, KV history prefetch
    ST = 1      #: on-chip -> HBM stores, KV append
    TLMM = 2    #: ternary table-lookup matmul engine
    PE = 3      #: DSP-packed PE array: INT4 linear layers, attention, router
    NPE = 4     #: nonlinear processing engine
    CTRL = 5    #: the dispatcher itself: NOP, SYNC, SKIP_IF, END


NUM_UNITS = len(Unit)
assert NUM_UNITS == MASK_BITS


class ErrorCode(enum.IntEnum, shape=8):
    """Error codes shown in the CSR ``ERROR_CODE`` register (0 = no error).

    Codes 1..5 are decode errors (reported by :class:`InstructionDecoder` and :func:`check_word`),
    the others run-time errors reported by the units, the dispatcher and the watchdog.
    """

    NONE = 0
    ILLEGAL_OPCODE = 1   #: opcode not assigned
    RESERVED_BITS = 2    #: a reserved bit is 1
    FIELD_RANGE = 3      #: a field is outside its [min, max]
    MISALIGNED = 4       #: a field is not a multiple of its alignment (addresses: 32 bytes)
    DEPENDENCY = 5       #: wait or release mask names the instruction's own queue
    HBM_RANGE = 6        #: an access runs past the end of HBM
    BUF_RANGE = 7        #: an access runs past the end of an on-chip buffer
    SHAPE = 8            #: inconsistent shapes (e.g. K not a multiple of the group size)
    TOKEN_OVERFLOW = 9   #: a release found its token counter at TOKEN_DEPTH
    WATCHDOG = 10        #: a wait lasted longer than the CSR WATCHDOG limit
    AXI_RESP = 11        #: an HBM port answered SLVERR / DECERR
    PC_RANGE = 12        #: the program counter reached the program length without END
    PROG_ALIGN = 13      #: the program base address is not 32-byte aligned


#: Error-code descriptions for docs and messages.
ERROR_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.NONE: "no error",
    ErrorCode.ILLEGAL_OPCODE: "decode: the opcode is not assigned (0x00 never is)",
    ErrorCode.RESERVED_BITS: "decode: a reserved bit above the opcode's last field is 1",
    ErrorCode.FIELD_RANGE: "decode: a field value is outside its allowed [min, max]",
    ErrorCode.MISALIGNED: "decode: an address / stride / offset is not a multiple of its alignment",
    ErrorCode.DEPENDENCY: "decode: the wait or release mask names the instruction's own queue",
    ErrorCode.HBM_RANGE: "run time: an HBM access runs past the end of the HBM address space",
    ErrorCode.BUF_RANGE: "run time: a buffer access runs past the end of the on-chip buffer",
    ErrorCode.SHAPE: "run time: inconsistent shape fields (e.g. K % group != 0)",
    ErrorCode.TOKEN_OVERFLOW: f"run time: a release found its token counter full ({TOKEN_DEPTH})",
    ErrorCode.WATCHDOG: "run time: a wait (tokens, idle queues, memory response) exceeded WATCHDOG cycles",
    ErrorCode.AXI_RESP: "run time: an HBM AXI port answered SLVERR or DECERR",
    ErrorCode.PC_RANGE: "run time: the program ended (PROG_LEN reached) without END",
    ErrorCode.PROG_ALIGN: "start: PROG_BASE is not a multiple of 32 bytes",
}

DECODE_ERRORS = (ErrorCode.ILLEGAL_OPCODE, ErrorCode.RESERVED_BITS, ErrorCode.FIELD_RANGE,
                 ErrorCode.MISALIGNED, ErrorCode.DEPENDENCY)


class Block(py_enum.IntEnum):
    """Routable block of a layer (bit index within the layer's 2 routing-bitmask bits)."""

    ATTN = 0
    FFN = 1


class KvFormat(py_enum.IntEnum):
    """KV-cache storage format of a layer / head."""

    FP16 = 0
    KIVI2 = 1
    KIVI4 = 2


class AttnPhase(py_enum.IntEnum):
    """Which attention product a PE_ATTN instruction computes."""

    QK = 0   #: scores[t] = q . k[t]
    PV = 1   #: out = sum_t p[t] v[t]


class NpeOp(py_enum.IntEnum):
    """NPE sub-operations (golden definitions in :mod:`ternopu.golden.nonlinear` / ``bitnet``)."""

    RMSNORM = 0         #: dst = rmsnorm(src_a) * weight(param_addr)
    SOFTMAX = 1         #: dst = softmax_online(src_a)
    RELU2_GLU = 2       #: dst = relu(src_a)^2 * src_b
    SWIGLU = 3          #: dst = silu(src_a) * src_b
    SILU = 4            #: dst = silu(src_a)
    ROPE = 5            #: dst = rope(src_a, pos): param_addr = table row of pos (cos[Dh/2], sin[Dh/2] binary32)
    RESIDUAL_ADD = 6    #: dst = src_a + src_b
    ACT_QUANT_INT8 = 7  #: dst = int8 codes of src_a; binary32 amax at dst_off + length rounded up to 32
    TO_FP16 = 8         #: dst = binary16(src_a) (RNE, saturating)
    TO_FP32 = 9         #: dst = binary32(src_a) (exact; source format in the ``fmt`` field)


class ElemFormat(py_enum.IntEnum):
    """Element format of an NPE operand that is not binary32 (``NPE.fmt``, used by TO_FP32)."""

    F32 = 0   #: IEEE binary32 (4 bytes)
    F16 = 1   #: IEEE binary16 (2 bytes)
    BF16 = 2  #: bfloat16 (2 bytes)


class WeightFormat(py_enum.IntEnum):
    """Weight format of a PE_LINEAR instruction."""

    INT4_GPTQ = 0  #: GPTQ words: qweight int32 [K/8, N], fp16 scales [K/G, N], qzeros int32 [K/G, N/8]
    FP16 = 1       #: binary16 rows W[N, K] (LM head): y = qk_bfp(x, W), BFP x BFP


# --------------------------------------------------------------------------------------------
# Declarative definition
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One operand field of an instruction.

    Parameters
    ----------
    name : str
        Field name (Python identifier; also the member name in the Amaranth layout).
    width : int
        Bits in the word.
    doc : str
        Meaning, units.
    min, max : int
        Allowed value range (inclusive); ``max`` defaults to ``2**width - 1``.
    align : int
        Values must be multiples of ``align`` (1 = no constraint).
    kind : str
        Rendering / meaning: ``"uint"``, ``"addr"`` (HBM byte address), ``"mask"``, ``"f32"``
        (binary32 bit pattern) or ``"enum"``.
    enum : type | None
        The Python ``IntEnum`` of symbolic values for ``kind == "enum"`` (contiguous from 0).
    """

    name: str
    width: int
    doc: str
    min: int = 0
    max: int | None = None
    align: int = 1
    kind: str = "uint"
    enum: type | None = None

    def __post_init__(self):
        if self.max is None:
            object.__setattr__(self, "max", (1 << self.width) - 1)
        if self.enum is not None:
            values = sorted(int(v) for v in self.enum)
            assert values == list(range(len(values))), f"{self.name}: enum must be contiguous from 0"
            object.__setattr__(self, "max", values[-1])
        assert 0 <= self.min <= self.max < (1 << self.width), self
        assert self.align >= 1 and (self.align & (self.align - 1)) == 0, self

    @property
    def default(self) -> int:
        """Value used when an instruction omits the field: the smallest legal value."""
        return -(-self.min // self.align) * self.align

    def violation(self, value: int) -> ErrorCode:
        """The decode error this value alone causes (range before alignment)."""
        if not self.min <= value <= self.max:
            return ErrorCode.FIELD_RANGE
        if value % self.align:
            return ErrorCode.MISALIGNED
        return ErrorCode.NONE

    def constraint_text(self) -> str:
        """Human-readable constraint (docs, messages)."""
        if self.enum is not None:
            parts = [", ".join(f"{int(v)}={v.name}" for v in self.enum)]
        else:
            parts = [f"{self.min}..{self.max}" if self.max < 1 << 20 else f"{self.min:#x}..{self.max:#x}"]
        if self.align > 1:
            parts.append(f"multiple of {self.align}")
        return "; ".join(parts)


@dataclass(frozen=True)
class OpcodeDef:
    """One opcode: its name, number, executing unit, meaning and operand fields (in bit order)."""

    name: str
    number: int
    unit: Unit
    doc: str
    fields: tuple[Field, ...] = ()

    @property
    def layout(self) -> data.StructLayout:
        """The full 256-bit word of this opcode as an Amaranth struct layout."""
        return opcode_layout(self)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}; fields: {[f.name for f in self.fields]}")

    def offsets(self) -> dict[str, tuple[int, int]]:
        """``{field name: (lsb, width)}`` for the header and operand fields, from the layout."""
        lay = self.layout
        return {name: (lay[name].offset, lay[name].width) for name in
                ["opcode", "wait", "release"] + [f.name for f in self.fields] + ["reserved"]
                if name in dict(lay)}

    @property
    def operand_bits(self) -> int:
        return sum(f.width for f in self.fields)


# Reusable field constructors: the common operand types share one definition each.

def _hbm_addr(name: str, doc: str) -> Field:
    return Field(name, HBM_ADDR_BITS, f"{doc} (HBM byte address)", align=BUS_BYTES, kind="addr")


def _port(name: str = "port") -> Field:
    return Field(name, 5, f"first HBM AXI port (pseudo-channel) 0..{HBM_PORTS - 1}", max=HBM_PORTS - 1)


def _nports(name: str = "nports") -> Field:
    return Field(name, 6, "ports striped over: bursts go round-robin to ports port, port+1, ... "
                 f"(mod {HBM_PORTS})", min=1, max=HBM_PORTS)


def _buf(prefix: str, what: str) -> tuple[Field, Field]:
    return (Field(f"{prefix}_buf", BUF_ID_BITS, f"{what}: on-chip buffer id"),
            Field(f"{prefix}_off", BUF_OFFSET_BITS, f"{what}: byte offset in the buffer",
                  align=BUS_BYTES))


def _layer() -> Field:
    return Field("layer", LAYER_BITS, "decoder layer index")


def _block() -> Field:
    return Field("block", 1, "routable block of the layer", kind="enum", enum=Block)


_LOAD_STORE_FIELDS = (
    _hbm_addr("hbm_addr", "first burst's address; burst i starts at hbm_addr + i*stride"),
    _port(),
    _nports(),
    Field("bursts", 16, "number of bursts", min=1),
    Field("burst_len", 9, "beats (of 32 bytes) per burst", min=1, max=MAX_BURST_BEATS),
    Field("stride", 32, "bytes between the start addresses of consecutive bursts", align=BUS_BYTES),
)

OPCODES: tuple[OpcodeDef, ...] = (
    OpcodeDef("NOP", 0x01, Unit.CTRL, "No operation (its wait/release tokens still take effect)."),
    OpcodeDef("END", 0x02, Unit.CTRL,
              "End of program: waits until every queue is idle, then raises done."),
    OpcodeDef("SYNC", 0x03, Unit.CTRL,
              "Barrier: dispatch stops until the queues in `queues` are idle and the wait tokens "
              "are available.",
              (Field("queues", 5, "mask of queues that must be idle (bit u = Unit u; CTRL excluded)",
                     kind="mask"),)),
    OpcodeDef("SKIP_IF", 0x04, Unit.CTRL,
              "Skip the next `count` instructions when the routing bitmask bit (layer, block) "
              "equals `sense` (bit = 1 means the router decided to skip the block). Must wait on "
              "the PE token released by the ROUTER that wrote the bit.",
              (_layer(), _block(),
               Field("sense", 1, "skip when the bitmask bit equals this value"),
               Field("count", 12, "instructions to skip (0 = none)"))),
    OpcodeDef("LOAD", 0x10, Unit.LD,
              "HBM -> on-chip buffer: `bursts` bursts of `burst_len` beats, burst i from "
              "hbm_addr + i*stride through port (port + i mod nports) mod 32, written "
              "contiguously from dst_off.",
              _LOAD_STORE_FIELDS + _buf("dst", "destination")),
    OpcodeDef("KV_PREFETCH", 0x11, Unit.LD,
              "KV history buffer prefetch for `layer`: for each of the `tokens` history tokens "
              "whose routing bitmask says it skipped attention at `layer`, read its reused K/V rows "
              "(from the layer given by the reuse map at map_addr) into the history buffer at "
              "hist_off; consumed out of order by PE_ATTN with hist=1.",
              (_layer(), Field("kv_head", 6, "KV head"),
               Field("tokens", 17, "history tokens to scan", min=1),
               _hbm_addr("map_addr", "per-token reuse map (source layer of each token's KV)"),
               _hbm_addr("kv_addr", "KV region of the model (all layers)"),
               _port(), _nports(),
               Field("hist_off", HIST_OFFSET_BITS, "byte offset in the KV history buffer",
                     align=BUS_BYTES))),
    OpcodeDef("STORE", 0x20, Unit.ST,
              "On-chip buffer -> HBM: the mirror of LOAD (bursts read contiguously from src_off).",
              _LOAD_STORE_FIELDS + _buf("src", "source")),
    OpcodeDef("KV_APPEND", 0x21, Unit.ST,
              "Write the current token's K and V rows of (layer, kv_head) at position `token` of "
              "the KV region (placement and, for KIVI formats, group quantization of the residual "
              "window are the KV unit's layout).",
              (_layer(), Field("kv_head", 6, "KV head"),
               Field("token", 17, "token position"),
               Field("kv_fmt", 2, "storage format", kind="enum", enum=KvFormat),
               Field("head_dim", 9, "elements per row", min=2, max=256, align=2),
               *_buf("k", "K row (fp16)"), *_buf("v", "V row (fp16)"),
               _hbm_addr("kv_addr", "KV region of this layer and head"), _port(),
               _hbm_addr("desc_addr", "KV layout descriptor (see docs/compiler.md)"))),
    OpcodeDef("MASK_STORE", 0x22, Unit.ST,
              "Store the routing bitmask bits of layers 0 .. layers-1 (bit 2*layer + block, 1 = "
              "skipped) LSB-first to HBM at hbm_addr (the token's route-history record), zero "
              "padded to a multiple of 32 bytes.",
              (_hbm_addr("hbm_addr", "route-history record of the current token"),
               Field("layers", 9, "layers stored", min=1, max=MAX_LAYERS))),
    OpcodeDef("TLMM", 0x30, Unit.TLMM,
              "Ternary matrix-vector product y[N] = rescale(tlmm(keys, xq), amax * g127): keys "
              "streamed from w_addr in ternopu.golden.tlmm.pack_keys order, int8 activations and "
              "their binary32 amax from the source buffer, binary32 outputs to the destination.",
              (_hbm_addr("w_addr", "packed 5-bit keys"), _port(), _nports(),
               Field("rows", 17, "N, output rows", min=1),
               Field("cols", 16, "K, input columns", min=1),
               *_buf("src", "int8 activations xq[K]"),
               *_buf("amax", "binary32 per-token amax written by ACT_QUANT_INT8"),
               *_buf("dst", "binary32 outputs y[N]"),
               Field("g127", 32, "binary32 gamma/127 of the weight tensor (positive, finite)",
                     min=1, max=F32_MAX_FINITE_BITS, kind="f32"),
               Field("reuse_act", 1, "1: activations already loaded by the previous TLMM"))),
    OpcodeDef("PE_LINEAR", 0x40, Unit.PE,
              "INT4 group-quantized linear layer y[N] = x[K] @ W[K, N] on the PE array: fp16 "
              "activations as BFP, packed INT4 weights, fp16 scales and packed zeros per group, "
              "zero folded out of the inner product, binary32 outputs.",
              (_hbm_addr("w_addr", "packed INT4 weights"), _port(), _nports(),
               Field("rows", 17, "N, output columns of W", min=1),
               Field("cols", 16, "K, input rows of W", min=1),
               Field("group_log2", 3, "log2 of the quantization group size (32, 64, 128)",
                     min=5, max=7),
               _hbm_addr("scale_addr", "fp16 group scales"),
               _hbm_addr("zero_addr", "packed 4-bit group zeros"),
               *_buf("src", "fp16 activations x[K]"), *_buf("dst", "binary32 outputs y[N]"),
               Field("wfmt", 1, "weight format (FP16: rows W[N, K] at w_addr, no scales/zeros)",
                     kind="enum", enum=WeightFormat))),
    OpcodeDef("PE_ATTN", 0x41, Unit.PE,
              "Attention for one (layer, kv head): QK^T scores or PV output over `tokens` cached "
              "tokens of format kv_fmt streamed from kv_addr (plus, with hist=1, the reused rows "
              "in the KV history buffer); KIVI formats keep the last resid_tokens in fp16.",
              (Field("phase", 1, "product", kind="enum", enum=AttnPhase),
               Field("kv_fmt", 2, "KV storage format", kind="enum", enum=KvFormat),
               _layer(), Field("kv_head", 6, "KV head"),
               Field("tokens", 17, "cached tokens attended", min=1),
               Field("resid_tokens", 9, "tokens of the fp16 residual window (KIVI)", max=256),
               _hbm_addr("kv_addr", "KV region of this layer and head"), _port(), _nports(),
               *_buf("src", "q (QK) or probabilities p (PV)"), *_buf("dst", "scores or output"),
               Field("hist", 1, "1: also consume reused rows from the KV history buffer"),
               _hbm_addr("desc_addr", "KV layout descriptor (geometry, per-layer regions, route "
                         "history; see docs/compiler.md)"),
               Field("scale", 32, "binary32 score scale 1/sqrt(head_dim), applied to every QK score "
                     "(one binary32 multiply)", kind="f32"))),
    OpcodeDef("ROUTER", 0x42, Unit.PE,
              "Router of (layer, block): score = qk_bfp(x, w) + bias (w: fp16 [dim] at w_addr, "
              "bias: binary32 at w_addr + dim*2 rounded up to 32 bytes; one binary32 add); writes "
              "routing bitmask bit (layer, block) = (score < threshold), 1 meaning skip.",
              (_layer(), _block(), *_buf("src", "fp16 activations x[dim]"),
               Field("dim", 16, "length of x", min=1),
               _hbm_addr("w_addr", "router weights and bias"),
               Field("threshold", 32, "binary32 threshold", kind="f32"))),
    OpcodeDef("NPE", 0x50, Unit.NPE,
              "Nonlinear / element-wise operation `subop` over `length` elements (see NpeOp).",
              (Field("subop", 5, "operation", kind="enum", enum=NpeOp),
               *_buf("a", "first operand"), *_buf("b", "second operand (GLU, residual)"),
               *_buf("dst", "result"),
               Field("length", 17, "elements", min=1),
               _hbm_addr("param_addr", "parameters (RMSNorm weight, RoPE tables)"),
               Field("pos", 17, "token position (ROPE)"),
               Field("head_dim", 9, "head dimension (ROPE; 0 otherwise)", max=256, align=2),
               Field("eps", 32, "binary32 epsilon (RMSNORM)", kind="f32"),
               Field("fmt", 2, "source element format (TO_FP32)", kind="enum", enum=ElemFormat))),
)

OPCODE_BY_NAME: dict[str, OpcodeDef] = {o.name: o for o in OPCODES}
OPCODE_BY_NUMBER: dict[int, OpcodeDef] = {o.number: o for o in OPCODES}
assert len(OPCODE_BY_NAME) == len(OPCODE_BY_NUMBER) == len(OPCODES)
assert 0 not in OPCODE_BY_NUMBER

#: Python enum of the assigned opcodes (value = opcode number).
Opcode = py_enum.IntEnum("Opcode", {o.name: o.number for o in OPCODES})

DEPENDENCY_SEMANTICS = f"""\
The dispatcher fetches instructions in program order and appends each to the queue of its unit
(LD, ST, TLMM, PE, NPE; CTRL instructions are executed by the dispatcher itself). Each unit
executes its own queue strictly in order; different units run concurrently, so loads, compute and
stores overlap. Order *between* units exists only through dependency tokens:

* For every ordered pair of different units (producer p, consumer c) there is a token counter
  cnt[p][c] of {TOKEN_COUNTER_BITS} bits, zero at start.
* `release` bit c of an instruction executed by unit p: when the instruction has *completed*
  (its results are visible to every other unit: buffer writes done, HBM writes acknowledged),
  cnt[p][c] += 1. A release that finds cnt[p][c] == {TOKEN_DEPTH} (TOKEN_DEPTH) does not wrap or
  saturate silently: the overlay stops with error TOKEN_OVERFLOW. The compiler keeps at most
  {TOKEN_DEPTH} tokens outstanding per pair.
* `wait` bit p of an instruction of unit c: it does not start before cnt[p][c] > 0 for every
  set bit p; it then takes (decrements) all of them at once, in the cycle it starts.
* A mask bit naming the instruction's own unit is a decode error (DEPENDENCY): in-order
  execution already orders a queue.
* CTRL instructions (NOP, SYNC, SKIP_IF, END): dispatch stops at them until their wait tokens are
  available; their release tokens are given when dispatch passes them. SYNC additionally waits
  until the queues in its `queues` mask are empty and idle; END until all queues are. SKIP_IF
  must wait on the token of the ROUTER instruction that writes its bitmask bit.
* A wait that cannot complete (a token never released, a queue that never drains, a memory
  response that never comes) is ended by the watchdog: any wait longer than the CSR WATCHDOG
  limit (cycles) stops the overlay with error WATCHDOG and the waiting instruction's pc.
  Nothing can hang.
* The routing bitmask ({MAX_LAYERS} layers x 2 blocks, bit 2*layer + block, 1 = skip) is cleared
  at start; ROUTER writes it; SKIP_IF, KV_PREFETCH, KV_APPEND, PE_ATTN and MASK_STORE
  read it.
"""


# --------------------------------------------------------------------------------------------
# Amaranth layouts
# --------------------------------------------------------------------------------------------

HEADER_LAYOUT = data.StructLayout({
    "opcode": unsigned(OPCODE_BITS),
    "wait": unsigned(MASK_BITS),
    "release": unsigned(MASK_BITS),
})

_LAYOUT_CACHE: dict[str, data.StructLayout] = {}


def opcode_layout(op: OpcodeDef) -> data.StructLayout:
    """Struct layout of the whole 256-bit word of ``op``: header, fields in order, ``reserved``."""
    if op.name not in _LAYOUT_CACHE:
        members = {name: HEADER_LAYOUT.members[name] for name in ("opcode", "wait", "release")}
        for f in op.fields:
            members[f.name] = unsigned(f.width)
        used = HEADER_BITS + op.operand_bits
        assert used <= INSTR_BITS, f"{op.name}: {used} bits do not fit {INSTR_BITS}"
        if used < INSTR_BITS:
            members["reserved"] = unsigned(INSTR_BITS - used)
        _LAYOUT_CACHE[op.name] = data.StructLayout(members)
    return _LAYOUT_CACHE[op.name]


#: A 256-bit word viewed as any opcode's struct (member = lower-case opcode name) or raw ``bits``.
INSTRUCTION_LAYOUT = data.UnionLayout({
    "bits": unsigned(INSTR_BITS),
    "header": HEADER_LAYOUT,
    **{o.name.lower(): opcode_layout(o) for o in OPCODES},
})

#: Output of :class:`InstructionDecoder`.
DECODED_LAYOUT = data.StructLayout({
    "error": ErrorCode,
    "unit": Unit,
    "instr": INSTRUCTION_LAYOUT,
})


# --------------------------------------------------------------------------------------------
# Python model: instructions, encoding, decoding
# --------------------------------------------------------------------------------------------


class IllegalInstruction(FormatError):
    """An instruction (or word) violates the ISA; ``code`` is the :class:`ErrorCode` the RTL reports."""

    def __init__(self, code: ErrorCode, reason: str, field: str | None = None):
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason
        self.field = field


def unit_mask(*units: Unit | str | int) -> int:
    """Wait/release mask with the bits of ``units`` (members, names like ``"PE"`` or numbers)."""
    m = 0
    for u in units:
        if isinstance(u, str):
            try:
                u = Unit[u.upper()]
            except KeyError:
                raise FormatError(f"unknown unit {u!r}; expected one of {[x.name for x in Unit]}") from None
        u = int(u)
        if not 0 <= u < NUM_UNITS:
            raise FormatError(f"unit number must be in 0..{NUM_UNITS - 1}, got {u}")
        m |= 1 << u
    return m


def _mask_names(mask: int) -> str:
    return "|".join(u.name for u in Unit if mask >> int(u) & 1)


def f32_bits(x: float) -> int:
    """Bit pattern of ``x`` rounded to IEEE binary32 (round to nearest even, overflow -> inf)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bits_f32(bits: int) -> float:
    """The binary32 value of a 32-bit pattern."""
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def _as_mask(m) -> int:
    if isinstance(m, int):
        return m
    if isinstance(m, str):
        return unit_mask(*[s for s in m.replace(",", "|").split("|") if s])
    return unit_mask(*m)


@dataclass
class Instruction:
    """One decoded / to-be-encoded instruction.

    Parameters
    ----------
    opcode : str
        Opcode name (key of :data:`OPCODE_BY_NAME`).
    fields : dict[str, int]
        Operand values; omitted operands take their :attr:`Field.default`.
    wait, release : int
        Dependency masks (bit u = :class:`Unit` u).
    """

    opcode: str
    fields: dict[str, int] = dc_field(default_factory=dict)
    wait: int = 0
    release: int = 0

    @classmethod
    def make(cls, opcode: str, *, wait=0, release=0, **fields) -> "Instruction":
        """Build with defaults filled in; ``wait``/``release`` accept masks, unit lists or "LD|PE"."""
        op = _opdef(opcode)
        values = {f.name: f.default for f in op.fields}
        for name, v in fields.items():
            _check_field_name(op, name)
            values[name] = int(v)
        return cls(op.name, values, _as_mask(wait), _as_mask(release))

    @property
    def op(self) -> OpcodeDef:
        return _opdef(self.opcode)

    @property
    def unit(self) -> Unit:
        return self.op.unit

    def __getitem__(self, name: str) -> int:
        return self.fields[name]


def _opdef(opcode: str | int | OpcodeDef) -> OpcodeDef:
    if isinstance(opcode, OpcodeDef):
        return opcode
    if isinstance(opcode, str):
        try:
            return OPCODE_BY_NAME[opcode.upper()]
        except KeyError:
            raise IllegalInstruction(ErrorCode.ILLEGAL_OPCODE,
                                     f"unknown opcode name {opcode!r}; known: {sorted(OPCODE_BY_NAME)}") from None
    try:
        return OPCODE_BY_NUMBER[int(opcode)]
    except KeyError:
        raise IllegalInstruction(ErrorCode.ILLEGAL_OPCODE, f"opcode {int(opcode):#04x} is not assigned") from None


def _check_field_name(op: OpcodeDef, name: str) -> None:
    """Raise :class:`FormatError` if ``op`` has no operand called ``name``."""
    if name not in {f.name for f in op.fields}:
        raise FormatError(f"{op.name} has no field {name!r}; fields: {[f.name for f in op.fields]}")


def _check_values(op: OpcodeDef, values: Mapping[str, int], wait: int, release: int) -> None:
    """Raise :class:`IllegalInstruction` for the highest-priority violation (module docstring)."""
    for f in op.fields:
        v = values[f.name]
        if not 0 <= v < (1 << f.width):
            raise IllegalInstruction(ErrorCode.FIELD_RANGE,
                                     f"{op.name}.{f.name} = {v} does not fit {f.width} bits", f.name)
    for code in (ErrorCode.FIELD_RANGE, ErrorCode.MISALIGNED):
        for f in op.fields:
            v = values[f.name]
            if f.violation(v) == code:
                raise IllegalInstruction(
                    code, f"{op.name}.{f.name} = {v:#x} violates its constraint ({f.constraint_text()})",
                    f.name)
    for what, mask in (("wait", wait), ("release", release)):
        if not 0 <= mask < (1 << MASK_BITS):
            raise IllegalInstruction(ErrorCode.FIELD_RANGE,
                                     f"{what} mask {mask:#x} does not fit {MASK_BITS} bits", what)
        if mask >> int(op.unit) & 1:
            raise IllegalInstruction(
                ErrorCode.DEPENDENCY,
                f"{op.name} runs on {op.unit.name}; its {what} mask {_mask_names(mask)} names its own queue",
                what)


def encode(instr: Instruction) -> int:
    """The 256-bit word of ``instr`` (validated: raises :class:`IllegalInstruction`)."""
    op = _opdef(instr.opcode)
    values = {f.name: f.default for f in op.fields}
    for name, v in instr.fields.items():
        _check_field_name(op, name)
        values[name] = int(v)
    _check_values(op, values, instr.wait, instr.release)
    offs = op.offsets()
    word = op.number | instr.wait << offs["wait"][0] | instr.release << offs["release"][0]
    for f in op.fields:
        word |= values[f.name] << offs[f.name][0]
    return word


def encode_program(instrs: Iterable[Instruction]) -> bytes:
    """Concatenated little-endian 32-byte words of ``instrs``."""
    return b"".join(encode(i).to_bytes(INSTR_BYTES, "little") for i in instrs)


def _word_of(word: int | bytes | bytearray) -> int:
    if isinstance(word, (bytes, bytearray, memoryview)):
        if len(word) != INSTR_BYTES:
            raise FormatError(f"an instruction is {INSTR_BYTES} bytes, got {len(word)}")
        return int.from_bytes(word, "little")
    word = int(word)
    if not 0 <= word < (1 << INSTR_BITS):
        raise FormatError(f"an instruction word is an unsigned {INSTR_BITS}-bit integer, got {word:#x}")
    return word


def _fields_of(op: OpcodeDef, word: int) -> dict[str, int]:
    offs = op.offsets()
    return {f.name: (word >> offs[f.name][0]) & ((1 << f.width) - 1) for f in op.fields}


def decode(word: int | bytes) -> Instruction:
    """Decode one word (int or 32 little-endian bytes); raise :class:`IllegalInstruction` if illegal.

    The error code is the one the RTL decoder reports for the same word (priority order in the
    module docstring).
    """
    word = _word_of(word)
    op = _opdef(word & ((1 << OPCODE_BITS) - 1))
    offs = op.offsets()
    if "reserved" in offs:
        lsb, width = offs["reserved"]
        res = word >> lsb
        if res:
            raise IllegalInstruction(
                ErrorCode.RESERVED_BITS,
                f"{op.name}: reserved bits [{lsb}, {lsb + width}) must be zero, found {res:#x} "
                f"(lowest set bit {lsb + (res & -res).bit_length() - 1})", "reserved")
    wait = (word >> offs["wait"][0]) & ((1 << MASK_BITS) - 1)
    release = (word >> offs["release"][0]) & ((1 << MASK_BITS) - 1)
    values = _fields_of(op, word)
    _check_values(op, values, wait, release)
    return Instruction(op.name, values, wait, release)


def check_word(word: int | bytes) -> ErrorCode:
    """:attr:`ErrorCode.NONE` if ``word`` is legal, else the decode error code."""
    try:
        decode(word)
    except IllegalInstruction as exc:
        return exc.code
    return ErrorCode.NONE


def decode_program(program: bytes) -> list[Instruction]:
    """Decode a whole program; raise :class:`IllegalInstruction` (with the pc) at the first bad word."""
    if len(program) % INSTR_BYTES:
        raise FormatError(f"a program is a multiple of {INSTR_BYTES} bytes, got {len(program)}")
    out = []
    for pc in range(len(program) // INSTR_BYTES):
        try:
            out.append(decode(program[pc * INSTR_BYTES:(pc + 1) * INSTR_BYTES]))
        except IllegalInstruction as exc:
            raise IllegalInstruction(exc.code, f"pc {pc}: {exc.reason}", exc.field) from None
    return out


def _format_value(f: Field, v: int) -> str:
    if f.kind == "addr" or (f.kind == "uint" and f.align >= BUS_BYTES):
        return f"{v:#x}"
    if f.kind == "f32":
        return f"{bits_f32(v)!r}"
    if f.kind == "enum" and f.enum is not None and v <= f.max:
        return f.enum(v).name
    if f.kind == "mask":
        return _mask_names(v) or "0"
    return str(v)


def format_instruction(instr: Instruction) -> str:
    """One-line assembly text of ``instr``."""
    op = instr.op
    parts = [f"{op.name:<11}"]
    parts += [f"{f.name}={_format_value(f, instr.fields[f.name])}" for f in op.fields]
    if instr.wait:
        parts.append(f"wait={_mask_names(instr.wait)}")
    if instr.release:
        parts.append(f"release={_mask_names(instr.release)}")
    return " ".join(parts).rstrip()


def disassemble(program: bytes) -> str:
    """Text listing of ``program``: ``pc: OPCODE field=value ...``, one line per word.

    Illegal words are listed as ``.word 0x...`` with the error code and reason instead of raising,
    so a corrupted program can still be inspected.
    """
    if len(program) % INSTR_BYTES:
        raise FormatError(f"a program is a multiple of {INSTR_BYTES} bytes, got {len(program)}")
    lines = []
    for pc in range(len(program) // INSTR_BYTES):
        raw = program[pc * INSTR_BYTES:(pc + 1) * INSTR_BYTES]
        try:
            text = format_instruction(decode(raw))
        except IllegalInstruction as exc:
            text = f".word {int.from_bytes(raw, 'little'):#066x}  ; illegal {exc.code.name}: {exc.reason}"
        lines.append(f"{pc:5d}: {text}")
    return "\n".join(lines) + ("\n" if lines else "")


class Assembler:
    """Build a program in Python, with labels for SKIP_IF counts.

    Example::

        asm = Assembler()
        asm.emit("ROUTER", layer=0, block=Block.ATTN, ..., release="CTRL")
        asm.emit("SKIP_IF", layer=0, block=Block.ATTN, sense=1, count="attn0_end", wait="PE")
        ...                                   # the attention block's instructions
        asm.label("attn0_end")
        asm.emit("END")
        program = asm.assemble()

    A string given as SKIP_IF ``count`` names a label *after* the SKIP_IF; it resolves to the number
    of instructions between them. Each ``emit`` returns the instruction's pc. Lower-case opcode names
    are methods too: ``asm.load(...)`` is ``asm.emit("LOAD", ...)``.
    """

    def __init__(self):
        self._items: list[tuple[str, dict, object, object]] = []
        self._labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    @property
    def pc(self) -> int:
        """pc of the next emitted instruction."""
        return len(self._items)

    def label(self, name: str) -> None:
        """Define ``name`` at the current pc."""
        if name in self._labels:
            raise FormatError(f"label {name!r} defined twice (pc {self._labels[name]} and {self.pc})")
        self._labels[name] = self.pc

    def emit(self, opcode: str, *, wait=0, release=0, **fields) -> int:
        """Append an instruction; returns its pc. Validation happens here (labels at assembly)."""
        op = _opdef(opcode)
        pending = {k: v for k, v in fields.items() if isinstance(v, str)}
        if pending and (op.name != "SKIP_IF" or set(pending) != {"count"}):
            raise FormatError(f"{op.name}: only SKIP_IF count may be a label, got {sorted(pending)}")
        probe = {k: (0 if isinstance(v, str) else v) for k, v in fields.items()}
        encode(Instruction.make(op.name, wait=wait, release=release, **probe))
        self._items.append((op.name, dict(fields), wait, release))
        return self.pc - 1

    def __getattr__(self, name: str):
        if name.upper() in OPCODE_BY_NAME:
            return lambda **kw: self.emit(name.upper(), **kw)
        raise AttributeError(name)

    def instructions(self) -> list[Instruction]:
        """The program with labels resolved (raises on undefined / backward labels)."""
        out = []
        for pc, (name, fields, wait, release) in enumerate(self._items):
            fields = dict(fields)
            if isinstance(fields.get("count"), str):
                label = fields["count"]
                if label not in self._labels:
                    raise FormatError(f"pc {pc}: SKIP_IF to undefined label {label!r}")
                count = self._labels[label] - (pc + 1)
                if count < 0:
                    raise FormatError(f"pc {pc}: SKIP_IF can only skip forward; label {label!r} "
                                      f"is at pc {self._labels[label]}")
                fields["count"] = count
            instr = Instruction.make(name, wait=wait, release=release, **fields)
            encode(instr)
            out.append(instr)
        return out

    def assemble(self) -> bytes:
        """The program's bytes (little-endian 32-byte words)."""
        return encode_program(self.instructions())


# --------------------------------------------------------------------------------------------
# RTL decoder
# --------------------------------------------------------------------------------------------


class InstructionDecoder(wiring.Component):
    """Decode and check instruction words; route legal ones to their unit.

    Ports
    -----
    i : In(stream.Signature(unsigned(256)))
        Instruction words as fetched (little-endian: bit i of the word = bit i%8 of byte i//8).
    o : Out(stream.Signature(DECODED_LAYOUT))
        One transfer per input word: ``error`` (:class:`ErrorCode`, NONE for a legal word, else the
        same code as :func:`check_word`), ``unit`` (the queue the instruction goes to; meaningful
        only when ``error`` is NONE) and ``instr`` (the word as a union of every opcode's struct,
        see :data:`INSTRUCTION_LAYOUT`). The controller stops at the first word with an error.

    Timing
    ------
    One register stage: a word accepted at a clock edge appears on ``o`` after it; one word per
    cycle while ``o`` is not stalled. ``i.ready = ~o.valid | o.ready``.
    """

    LATENCY = 1

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(unsigned(INSTR_BITS))),
            "o": Out(stream.Signature(DECODED_LAYOUT)),
        })

    @staticmethod
    def _checks(word, op: OpcodeDef):
        """(reserved_nonzero, range_bad, align_bad, dependency_bad) of ``word`` read as ``op``."""
        view = data.View(opcode_layout(op), word)
        reserved = view.reserved.any() if "reserved" in dict(opcode_layout(op)) else 0
        range_bad, align_bad = [], []
        for f in op.fields:
            v = getattr(view, f.name)
            if f.min > 0:
                range_bad.append(v < f.min)
            if f.max < (1 << f.width) - 1:
                range_bad.append(v > f.max)
            if f.align > 1:
                align_bad.append(v[:f.align.bit_length() - 1].any())
        dep = view.wait[int(op.unit)] | view.release[int(op.unit)]
        return reserved, _or(range_bad), _or(align_bad), dep

    def elaborate(self, platform):
        m = Module()
        word = self.i.payload
        header = data.View(HEADER_LAYOUT, word[:HEADER_BITS])

        illegal = Signal()
        reserved = Signal()
        range_bad = Signal()
        align_bad = Signal()
        dep_bad = Signal()
        unit = Signal(Unit)
        with m.Switch(header.opcode):
            for op in OPCODES:
                with m.Case(op.number):
                    r, rb, ab, d = self._checks(word, op)
                    m.d.comb += [reserved.eq(r), range_bad.eq(rb),
                                 align_bad.eq(ab), dep_bad.eq(d), unit.eq(op.unit)]
            with m.Default():
                m.d.comb += illegal.eq(1)

        error = Signal(ErrorCode)
        with m.If(illegal):
            m.d.comb += error.eq(ErrorCode.ILLEGAL_OPCODE)
        with m.Elif(reserved):
            m.d.comb += error.eq(ErrorCode.RESERVED_BITS)
        with m.Elif(range_bad):
            m.d.comb += error.eq(ErrorCode.FIELD_RANGE)
        with m.Elif(align_bad):
            m.d.comb += error.eq(ErrorCode.MISALIGNED)
        with m.Elif(dep_bad):
            m.d.comb += error.eq(ErrorCode.DEPENDENCY)
        with m.Else():
            m.d.comb += error.eq(ErrorCode.NONE)

        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                self.o.valid.eq(1),
                self.o.payload.error.eq(error),
                self.o.payload.unit.eq(Mux(illegal, 0, unit)),
                self.o.payload.instr.bits.eq(word),
            ]
        return m


def _or(terms):
    """OR of 1-bit terms (constant 0 for none)."""
    acc = C(0, 1)
    for t in terms:
        acc = acc | t
    return acc
