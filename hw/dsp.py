"""Behavioural DSP48E2 / DSP58 slices in Amaranth, with an option to emit the real primitive.

What is modelled
----------------
The datapath the PE array uses, bit for bit as the golden :func:`ternopu.golden.dsp.dsp_slice`:

* operand ports ``a`` (A, 30 / 34 bits), ``b`` (B, 18 / 24 bits), ``c`` (C, 48 / 58 bits) and
  ``d`` (D, 27 bits), all two's complement; ``A`` enters the pre-adder / multiplier through its
  low 27 bits, exactly as the golden model wraps it;
* the 27-bit pre-adder: ``AD = A[26:0]`` (:data:`PREADD_OFF`), ``wrap27(A + D)`` (:data:`PREADD_ADD`)
  or ``wrap27(D - A)`` (:data:`PREADD_SUB`), chosen per operation by the ``preadd`` input;
* the 27 x 18 (DSP58: 27 x 24) signed multiplier ``M = AD * B``;
* the ALU in add mode, ``P = wrap_P(M + W + Z)``, with ``W`` in {0, P, C} (``w_sel``) and ``Z`` in
  {0, PCIN, P, C} (``z_sel``), P 48 / 58 bits wide. ``W = C, Z = P`` is the golden
  ``P = M + C + P_in``; ``W = P, Z = PCIN`` is the last slice of an accumulating cascade column.

Pipeline registers (:class:`DSPPipeline`, each 0 or 1): ``in_reg`` (A, B, C, D and the control
inputs), ``ad_reg`` (pre-adder output; B and the control get a matching delay, as BREG=2 does on
the silicon), ``m_reg`` (multiplier output) and ``p_reg`` (P). The control inputs (``preadd``,
``w_sel``, ``z_sel``) and ``c`` travel with the operands, so a caller presents the whole operation
in one cycle and reads ``p`` :attr:`DSPSlice.latency` enabled cycles later; ``pcin`` is consumed at
the ALU (the cascade input of the next slice is this slice's ``p``, one cycle per link when
``p_reg`` is 1). Feeding ``P`` back (``w_sel``/``z_sel`` = P) needs ``p_reg = 1``.

Every register advances only while ``ce`` is high (the silicon's clock enables tied together), so
a whole array can stall under backpressure.

Instance emission
-----------------
``DSPSlice(..., primitive=True)`` elaborates to ``Instance("DSP48E2", ...)`` (or ``"DSP58"``) with
the attributes that select the same datapath (``AMULTSEL="AD"``, ``BREG=in_reg+ad_reg``, ``AREG``,
``DREG``, ``ADREG``, ``MREG``, ``PREG``, ``CREG``, ``OPMODEREG``, ``INMODEREG``) and the dynamic
``OPMODE`` / ``INMODE`` buses computed from ``w_sel``/``z_sel``/``preadd``. The control inputs and
``C`` are delayed in fabric to line up with the silicon's M stage. This path is for synthesis
only (no UNISIM models run here); tests check the emitted attributes and buses.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.dsp import DSP48E2, DSP58, PREADD_BITS, DSPSlice as GoldenSlice
from ternopu.golden.errors import ConfigError

__all__ = [
    "PREADD_OFF",
    "PREADD_ADD",
    "PREADD_SUB",
    "W_ZERO",
    "W_P",
    "W_C",
    "Z_ZERO",
    "Z_PCIN",
    "Z_P",
    "Z_C",
    "DSPPipeline",
    "FULL_PIPELINE",
    "DSPSlice",
    "DSP48E2Slice",
    "DSP58Slice",
    "delay_line",
]

PREADD_OFF = 0
"""``preadd`` code: multiplier input ``AD = A[26:0]``."""
PREADD_ADD = 1
"""``preadd`` code: ``AD = wrap27(A + D)``."""
PREADD_SUB = 2
"""``preadd`` code: ``AD = wrap27(D - A)``."""
W_ZERO, W_P, W_C = 0, 1, 2
"""``w_sel`` codes: W multiplexer = 0, P, C."""
Z_ZERO, Z_PCIN, Z_P, Z_C = 0, 1, 2, 3
"""``z_sel`` codes: Z multiplexer = 0, PCIN, P, C."""


@dataclass(frozen=True)
class DSPPipeline:
    """Pipeline registers of a slice (each 0 or 1).

    Attributes
    ----------
    in_reg : A, B, C, D and control input registers (AREG/BREG/CREG/DREG/OPMODEREG/INMODEREG = 1).
    ad_reg : pre-adder output register (ADREG); B and control get one more delay (BREG = 2).
    m_reg : multiplier output register (MREG).
    p_reg : output register (PREG); required for P feedback.
    """

    in_reg: int = 1
    ad_reg: int = 1
    m_reg: int = 1
    p_reg: int = 1

    def __post_init__(self):
        for name in ("in_reg", "ad_reg", "m_reg", "p_reg"):
            v = getattr(self, name)
            if v not in (0, 1) or isinstance(v, bool):
                raise ConfigError(f"DSPPipeline.{name}: expected 0 or 1, got {v!r}")

    @property
    def to_alu(self) -> int:
        """Enabled cycles from the inputs to the ALU input (M)."""
        return self.in_reg + self.ad_reg + self.m_reg

    @property
    def latency(self) -> int:
        """Enabled cycles from the inputs to ``p``."""
        return self.to_alu + self.p_reg


FULL_PIPELINE = DSPPipeline(1, 1, 1, 1)
"""All registers on: what a 300 MHz design uses (latency 4)."""


def delay_line(m: Module, sig, n: int, ce, name: str):
    """``sig`` delayed by ``n`` enabled cycles (registers gated by ``ce``)."""
    for i in range(n):
        nxt = Signal.like(sig, name=f"{name}_d{i}")
        with m.If(ce):
            m.d.sync += nxt.eq(sig)
        sig = nxt
    return sig


class DSPSlice(wiring.Component):
    """One DSP48E2 / DSP58 slice (behavioural, or the primitive with ``primitive=True``).

    Parameters
    ----------
    slice_ : golden DSPSlice (``ternopu.golden.dsp.DSP48E2`` or ``DSP58``): port widths.
    pipeline : DSPPipeline
    primitive : bool
        Emit ``Instance("DSP48E2"/"DSP58")`` instead of the behavioural model (synthesis only).

    Ports
    -----
    a, b, c, d : In(signed(width of the port))
    pcin : In(signed(p_bits)) -- cascade input (PCIN), used when ``z_sel == Z_PCIN``.
    preadd : In(2) -- PREADD_OFF / PREADD_ADD / PREADD_SUB.
    w_sel : In(2), z_sel : In(2) -- ALU multiplexers (see module docstring).
    ce : In(1), init 1 -- clock enable of every register.
    p : Out(signed(p_bits))

    Raises
    ------
    ConfigError
        P feedback is structurally needed by callers only with ``p_reg = 1``; a slice with
        ``p_reg = 0`` is accepted but ``w_sel``/``z_sel`` = P is then outside the contract.
    """

    def __init__(self, slice_: GoldenSlice = DSP48E2, pipeline: DSPPipeline = FULL_PIPELINE,
                 *, primitive: bool = False):
        if slice_ not in (DSP48E2, DSP58):
            raise ConfigError(f"DSPSlice: expected golden DSP48E2 or DSP58, got {slice_!r}")
        if not isinstance(pipeline, DSPPipeline):
            raise ConfigError(f"DSPSlice: expected a DSPPipeline, got {pipeline!r}")
        self.golden = slice_
        self.pipeline = pipeline
        self.primitive = primitive
        s = slice_
        super().__init__({
            "a": In(signed(s.a_bits)),
            "b": In(signed(s.b_bits)),
            "c": In(signed(s.c_bits)),
            "d": In(signed(s.d_bits)),
            "pcin": In(signed(s.p_bits)),
            "preadd": In(2),
            "w_sel": In(2),
            "z_sel": In(2),
            "ce": In(1, init=1),
            "p": Out(signed(s.p_bits)),
        })

    @property
    def latency(self) -> int:
        """Enabled cycles from an operation's inputs to its ``p``."""
        return self.pipeline.latency

    def elaborate(self, platform):
        if self.primitive:
            return self._elaborate_primitive()
        m = Module()
        s, pl, ce = self.golden, self.pipeline, self.ce
        # Input registers.
        a = delay_line(m, self.a[:PREADD_BITS].as_signed(), pl.in_reg, ce, "a")
        d = delay_line(m, self.d, pl.in_reg, ce, "d")
        b = delay_line(m, self.b, pl.in_reg + pl.ad_reg, ce, "b")
        ctrl_in = Cat(self.preadd, self.w_sel, self.z_sel)
        pre_ctl = delay_line(m, ctrl_in, pl.in_reg, ce, "ctl_pre")
        alu_ctl = delay_line(m, ctrl_in, pl.to_alu, ce, "ctl_alu")
        c = delay_line(m, self.c, pl.to_alu, ce, "c")
        # Pre-adder, 27 bits, wrapping.
        preadd = pre_ctl[0:2]
        ad_now = Signal(signed(PREADD_BITS))
        with m.Switch(preadd):
            with m.Case(PREADD_ADD):
                m.d.comb += ad_now.eq(a + d)
            with m.Case(PREADD_SUB):
                m.d.comb += ad_now.eq(d - a)
            with m.Default():
                m.d.comb += ad_now.eq(a)
        ad = delay_line(m, ad_now, pl.ad_reg, ce, "ad")
        m_now = Signal(signed(PREADD_BITS + s.b_bits))
        m.d.comb += m_now.eq(ad * b)
        mul = delay_line(m, m_now, pl.m_reg, ce, "m")
        # ALU: P = wrap(M + W + Z).
        w_sel, z_sel = alu_ctl[2:4], alu_ctl[4:6]
        p_fb = Signal(signed(s.p_bits))
        w = Signal(signed(s.p_bits))
        z = Signal(signed(s.p_bits))
        m.d.comb += [
            w.eq(Mux(w_sel == W_P, p_fb, Mux(w_sel == W_C, c, 0))),
        ]
        with m.Switch(z_sel):
            with m.Case(Z_PCIN):
                m.d.comb += z.eq(self.pcin)
            with m.Case(Z_P):
                m.d.comb += z.eq(p_fb)
            with m.Case(Z_C):
                m.d.comb += z.eq(c)
            with m.Default():
                m.d.comb += z.eq(0)
        p_now = Signal(signed(s.p_bits))
        m.d.comb += p_now.eq(mul + w + z)  # truncation to p_bits = two's-complement wrap
        if pl.p_reg:
            with m.If(ce):
                m.d.sync += p_fb.eq(p_now)
        else:
            m.d.comb += p_fb.eq(0)  # no P register: feedback is outside the contract
            # (combinational P feedback would be a loop)
        m.d.comb += self.p.eq(p_fb if pl.p_reg else p_now)
        return m

    # ------------------------------------------------------------------------------------
    def primitive_attributes(self) -> dict:
        """Attributes of the emitted primitive (also what tests check)."""
        pl = self.pipeline
        return {
            "AMULTSEL": "AD",
            "BMULTSEL": "B",
            "PREADDINSEL": "A",
            "USE_MULT": "MULTIPLY",
            "AREG": pl.in_reg,
            "ACASCREG": pl.in_reg,
            "BREG": pl.in_reg + pl.ad_reg,
            "BCASCREG": pl.in_reg + pl.ad_reg,
            "DREG": pl.in_reg,
            "ADREG": pl.ad_reg,
            "MREG": pl.m_reg,
            "PREG": pl.p_reg,
            "CREG": 1,
            "INMODEREG": pl.in_reg,
            "OPMODEREG": 1,
            "ALUMODEREG": 1,
            "CARRYINREG": 0,
            "CARRYINSELREG": 0,
        }

    def _elaborate_primitive(self):
        m = Module()
        s, pl, ce = self.golden, self.pipeline, self.ce
        name = "DSP48E2" if s is DSP48E2 else "DSP58"
        # INMODE[4:0]: bit 2 = D enabled into the pre-adder, bit 3 = subtract (D - A),
        # bit 1 = zero A. OPMODE[8:0] = W(8:7) Z(6:4) Y(3:2) X(1:0): X=Y=M (01/01).
        inmode = Signal(5)
        with m.Switch(self.preadd):
            with m.Case(PREADD_ADD):
                m.d.comb += inmode.eq(0b00100)
            with m.Case(PREADD_SUB):
                m.d.comb += inmode.eq(0b01100)
            with m.Default():
                m.d.comb += inmode.eq(0b00000)
        w_code = Mux(self.w_sel == W_P, 0b01, Mux(self.w_sel == W_C, 0b11, 0b00))
        z_code = Signal(3)
        with m.Switch(self.z_sel):
            with m.Case(Z_PCIN):
                m.d.comb += z_code.eq(0b001)
            with m.Case(Z_P):
                m.d.comb += z_code.eq(0b010)
            with m.Case(Z_C):
                m.d.comb += z_code.eq(0b011)
            with m.Default():
                m.d.comb += z_code.eq(0b000)
        opmode_now = Cat(Const(0b0101, 4), z_code, w_code)
        # OPMODE and C are registered once in the slice (OPMODEREG = CREG = 1) right before the
        # ALU; delay the rest of the way in fabric so they meet their multiplier product.
        opmode = delay_line(m, opmode_now, pl.to_alu - 1, ce, "opmode")
        c = delay_line(m, self.c, pl.to_alu - 1, ce, "c")
        inm = delay_line(m, inmode, 0, ce, "inmode")
        params = {f"p_{k}": v for k, v in self.primitive_attributes().items()}
        m.submodules.slice = Instance(
            name,
            **params,
            i_CLK=ClockSignal(),
            i_A=self.a, i_B=self.b, i_C=c, i_D=self.d, i_PCIN=self.pcin,
            i_INMODE=inm, i_OPMODE=opmode, i_ALUMODE=Const(0, 4),
            i_CARRYIN=0, i_CARRYINSEL=Const(0, 3),
            i_CEA1=ce, i_CEA2=ce, i_CEB1=ce, i_CEB2=ce, i_CEC=ce, i_CED=ce, i_CEAD=ce,
            i_CEM=ce, i_CEP=ce, i_CECTRL=ce, i_CEINMODE=ce, i_CEALUMODE=ce, i_CECARRYIN=ce,
            i_RSTA=0, i_RSTB=0, i_RSTC=0, i_RSTD=0, i_RSTM=0, i_RSTP=0, i_RSTCTRL=0,
            i_RSTINMODE=0, i_RSTALUMODE=0, i_RSTALLCARRYIN=0,
            o_P=self.p,
        )
        return m


def DSP48E2Slice(pipeline: DSPPipeline = FULL_PIPELINE, *, primitive: bool = False) -> DSPSlice:
    """A DSP48E2 slice (27-bit pre-adder, 27 x 18 multiplier, 48-bit P)."""
    return DSPSlice(DSP48E2, pipeline, primitive=primitive)


def DSP58Slice(pipeline: DSPPipeline = FULL_PIPELINE, *, primitive: bool = False) -> DSPSlice:
    """A DSP58 slice (27-bit pre-adder, 27 x 24 multiplier, 58-bit P)."""
    return DSPSlice(DSP58, pipeline, primitive=primitive)
