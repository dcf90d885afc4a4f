"""binary32 / binary16 primitives of the NPE, bit-exact with torch element-wise ops on CPU.

Format
------
A binary32 word is ``sign (bit 31) | biased exponent be (bits 30..23, bias 127) | fraction (bits
22..0)`` carried on ``unsigned(32)`` signals as the raw bit pattern (``torch.float32`` viewed as
``int32``); binary16 likewise ``sign (15) | be (14..10, bias 15) | fraction (9..0)``.

What this module adds to :mod:`ternopu.hw.fp32`
-----------------------------------------------
:mod:`ternopu.hw.fp32` has an exact int->binary32 converter and a DAZ multiplier. The NPE needs the
full IEEE behaviour that torch has on CPU (the golden model in :mod:`ternopu.golden.nonlinear`
multiplies and adds arbitrary binary32 values, subnormals included), so the operators here are:

* :func:`fmul` -- binary32 multiply, round to nearest even, subnormal operands *and* results
  (gradual underflow), overflow to +-inf (3 pipeline stages);
* :func:`fadd` / :func:`fsub` -- binary32 add/subtract, RNE, subnormals, IEEE signed zeros
  (``x + (-x) = +0``, ``-0 + -0 = -0``), overflow to +-inf (3 stages);
* :func:`fmax` / :func:`fmin` / :func:`flt` -- ordered compare on the bit patterns (1 stage);
* :func:`f2i` -- binary32 -> signed integer, RNE, saturating, with an optional exact power-of-two
  pre-scale (2 stages);
* :func:`i2f` -- unsigned/signed integer (any width up to 128) times ``2^lsb_exp`` -> binary32,
  one RNE rounding (2 stages);
* :func:`f2h` -- binary32 -> binary16, RNE, saturating at +-65504, binary16 subnormals (2 stages);
* :func:`fceil` -- binary32 ceil (integral value as binary32, sign of zero kept) (2 stages);
* :func:`scale_pow2` -- ``v * 2^k`` by exponent addition for positive normal ``v``, +0 below 2^-126
  (the golden ``_scale_pow2``) (1 stage);
* :class:`Float32Div` -- a correctly rounded iterative binary32 divider (radix 2, 27 cycles).

NaN and infinity operands are outside every contract (the NPE rejects them at entry and raises its
error output): any operation with an exponent field of 255 on an input returns the quiet NaN
``0x7FC00000`` so the error stays visible downstream. The sign and payload of NaNs are not modelled.

Pipelining
----------
The operators are *dataflow builders*: :class:`Pipe` tracks at which pipeline stage every value is
valid (:class:`Val`), inserts balancing delay registers when operands of different depth meet,
and gates every register with one advance enable ``en`` (a whole unit stalls together under
backpressure). A unit's latency is the stage of its output value.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "F32_QNAN", "F32_ONE", "F32_EXP_MAX", "F16_MAX_BITS", "F16_MAX", "Val", "Pipe", "f32_bits",
    "f32_value", "fmul", "fadd", "fsub", "fneg", "fabs", "fmax", "fmin", "flt", "f2i", "i2f",
    "f2h", "fceil", "scale_pow2", "f32_lt", "rom", "is_nonfinite", "lzc", "FMUL_STAGES", "FADD_STAGES",
    "F2I_STAGES", "I2F_STAGES", "F2H_STAGES", "Float32Div", "StreamPipeline",
]

F32_QNAN = 0x7FC00000
"""Quiet NaN returned by any operator with a NaN/Inf operand (outside the contract)."""
F32_ONE = 0x3F800000
F32_EXP_MAX = 255
F32_INF = 0x7F800000
F16_MAX = 65504.0
"""Largest finite binary16; :func:`f2h` saturates there."""
F16_MAX_BITS = 0x7BFF

FMUL_STAGES = 3
FADD_STAGES = 3
F2I_STAGES = 2
I2F_STAGES = 2
F2H_STAGES = 2
FCEIL_STAGES = 2


def f32_bits(v: float) -> int:
    """Bit pattern of ``v`` rounded once (RNE) to binary32 (offline constants)."""
    import struct
    return struct.unpack("<I", struct.pack("<f", v))[0]


def f32_value(bits: int) -> float:
    """The binary32 value of a bit pattern (for tests and docs)."""
    import struct
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


# ----------------------------------------------------------------------------------------------
# dataflow pipeline builder
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Val:
    """A value in a pipeline: ``sig`` (Amaranth value) valid at pipeline stage ``stage``.

    ``stage`` None marks a constant (valid at every stage, never delayed).
    """

    sig: Value
    stage: int | None


class Pipe:
    """Builds a stall-together pipeline: every register advances when ``en`` is high.

    Parameters
    ----------
    m : Module
        Module that receives the logic.
    en : Value
        Advance enable (1 bit).
    name : str
        Prefix of the generated register names.
    """

    def __init__(self, m: Module, en: Value, name: str = "p"):
        self.m, self.en, self.name = m, en, name
        self._n = 0
        self._delay_cache: dict[tuple[int, int], Val] = {}
        self._keep: list[Value] = []

    def const(self, value: int, width: int) -> Val:
        """A constant of ``width`` bits."""
        return Val(Const(value, width), None)

    def input(self, sig: Value, stage: int = 0) -> Val:
        """A value entering the pipeline at ``stage``."""
        return Val(Value.cast(sig), stage)

    def reg(self, expr, stage: int, name: str = "r") -> Val:
        """Register ``expr`` (valid at ``stage``) -> a value valid at ``stage + 1``."""
        expr = Value.cast(expr)
        self._n += 1
        s = Signal(expr.shape(), name=f"{self.name}_{name}{self._n}")
        with self.m.If(self.en):
            self.m.d.sync += s.eq(expr)
        return Val(s, stage + 1)

    def at(self, v: Val, stage: int) -> Value:
        """``v`` delayed to ``stage`` (balancing registers are shared between users)."""
        if v.stage is None:
            return v.sig
        if stage < v.stage:
            raise ValueError(f"value of stage {v.stage} requested at earlier stage {stage}")
        cur = v
        while cur.stage < stage:
            key = (id(v.sig), cur.stage + 1)
            nxt = self._delay_cache.get(key)
            if nxt is None:
                nxt = self.reg(cur.sig, cur.stage, name="d")
                self._delay_cache[key] = nxt
                self._keep.append(v.sig)  # keep the object alive so its id() stays unique
            cur = nxt
        return cur.sig

    def align(self, *vals: Val) -> tuple[int, list[Value]]:
        """Common stage (the latest of ``vals``; 0 if all constant) and the aligned signals."""
        stages = [v.stage for v in vals if v.stage is not None]
        s = max(stages) if stages else 0
        return s, [self.at(v, s) for v in vals]

    def comb(self, fn, *vals: Val) -> Val:
        """Combinational function of aligned values (no register): ``fn(*signals)``."""
        s, sigs = self.align(*vals)
        return Val(Value.cast(fn(*sigs)), s)


def lzc(m: Module, v: Value, width: int, name: str = "lz") -> Signal:
    """Leading-zero count of the ``width``-bit value ``v`` (``width`` when ``v == 0``), comb."""
    cnt = Signal(range(width + 1), name=name, init=0)
    m.d.comb += cnt.eq(width)
    for b in range(width):  # later assignments win: the highest set bit decides
        with m.If(v[b]):
            m.d.comb += cnt.eq(width - 1 - b)
    return cnt


def _fields(x: Value):
    """(sign, biased exponent field, fraction, significand with hidden bit, effective exponent)."""
    sign, be, frac = x[31], x[23:31], x[:23]
    mant = Cat(frac, be != 0)
    eff = Mux(be == 0, 1, be)  # subnormals scale like exponent 1 without the hidden bit
    return sign, be, frac, mant, eff


def is_nonfinite(x: Value) -> Value:
    """1 where the binary32 pattern is NaN or +-inf (exponent field 255)."""
    return x[23:31] == F32_EXP_MAX


def fneg(p: Pipe, a: Val) -> Val:
    """``-a`` (sign flip, exact, no stage)."""
    return p.comb(lambda x: Cat(x[:31], ~x[31]), a)


def fabs(p: Pipe, a: Val) -> Val:
    """``|a|`` (sign cleared, exact, no stage)."""
    return p.comb(lambda x: Cat(x[:31], Const(0, 1)), a)


def _order_key(x: Value) -> Value:
    """Signed integer that orders binary32 patterns like their values (-0 sorts below +0)."""
    return Mux(x[31], ~Cat(x[:31], Const(0, 1)), x).as_signed()  # -(|x|)-1 for negatives


def _lt(x: Value, y: Value) -> Value:
    """Comb ``x < y`` for finite binary32 patterns (``-0 < +0`` false)."""
    both_zero = (x[:31] == 0) & (y[:31] == 0)
    return (_order_key(x) < _order_key(y)) & ~both_zero


f32_lt = _lt


def flt(p: Pipe, a: Val, b: Val) -> Val:
    """``a < b`` for finite binary32 (1 bit, comb); ``-0 < +0`` is false (IEEE)."""
    return p.comb(_lt, a, b)


def fmax(p: Pipe, a: Val, b: Val) -> Val:
    """``max(a, b)`` for finite binary32, registered (1 stage). Returns ``a`` on ties (incl. +-0)."""
    s, (x, y) = p.align(a, b)
    return p.reg(Mux(_lt(x, y), y, x), s, "max")


def fmin(p: Pipe, a: Val, b: Val) -> Val:
    """``min(a, b)`` for finite binary32, registered (1 stage). Returns ``a`` on ties."""
    s, (x, y) = p.align(a, b)
    return p.reg(Mux(_lt(y, x), y, x), s, "min")


def _round_pack(m: Module, frac: Value, guard: Value, sticky: Value, be_field: Value,
                sign: Value) -> Value:
    """RNE of a significand given by its 23 fraction bits ``frac`` (the hidden bit is implied by
    ``be_field``: 0 for subnormals) with exponent field ``be_field`` (< 255 on entry); the carry
    ripples into the exponent (subnormal -> normal, 1.11..1 -> 10.0, largest finite -> inf).
    Returns the 32-bit pattern."""
    up = guard & (sticky | frac[0])
    # 31 bits: be_field < 255 keeps the sum below 2^31 (at most +inf's pattern)
    packed = Signal(31)
    m.d.comb += packed.eq(Cat(frac[:23], be_field[:8]) + up)
    return Cat(packed, sign)


def fmul(p: Pipe, a: Val, b: Val) -> Val:
    """binary32 ``a * b``, RNE, IEEE subnormals, +-inf on overflow; NaN/Inf in -> QNaN.

    3 stages: (1) unpack, 24x24 significand product, exponent sum; (2) leading-zero count,
    normalization, right shift for subnormal results with sticky; (3) round half to even, pack.
    """
    m = p.m
    s, (x, y) = p.align(a, b)
    sx, _, _, mx, ex = _fields(x)
    sy, _, _, my, ey = _fields(y)
    nan = p.reg(is_nonfinite(x) | is_nonfinite(y), s, "mnan")
    sign = p.reg(sx ^ sy, s, "msgn")
    esum = p.reg(ex + ey, s, "mesum")
    prod = p.reg(mx * my, s, "mprod")
    # ---- stage 2
    pr = prod.sig
    lz = lzc(m, pr, 48, name=f"{p.name}_mlz{p._n}")
    norm = Signal(48, name=f"{p.name}_mnorm{p._n}")
    m.d.comb += norm.eq((pr << lz)[:48])
    be = Signal(signed(12), name=f"{p.name}_mbe{p._n}")  # biased exponent of 1.f at bit 47
    m.d.comb += be.eq(esum.sig - 126 - lz)
    shift = Signal(range(27), name=f"{p.name}_msh{p._n}")
    m.d.comb += shift.eq(Mux(be >= 1, 0, Mux(be < -24, 26, 1 - be)))
    wide = Signal(79, name=f"{p.name}_mwide{p._n}")  # bit 79 would be the hidden bit, implied by efield
    m.d.comb += wide.eq(Cat(Const(0, 32), norm) >> shift)
    sh = wide[32:]
    s2 = s + 1
    keep = p.reg(sh[24:47], s2, "mkeep")  # fraction bits; the hidden bit is in efield
    guard = p.reg(sh[23], s2, "mg")
    sticky = p.reg((sh[:23] != 0) | (wide[:32] != 0), s2, "mst")
    ovf = p.reg(be > 254, s2, "movf")
    efield = p.reg(Mux(be >= 1, be[:8], 0), s2, "mef")
    zero = p.reg(pr == 0, s2, "mz")
    nan2 = p.reg(nan.sig, s2, "mnan")
    sign2 = p.reg(sign.sig, s2, "msgn")
    # ---- stage 3
    rounded = _round_pack(m, keep.sig, guard.sig, sticky.sig, efield.sig, sign2.sig)
    out = Mux(nan2.sig, F32_QNAN,
              Mux(zero.sig, Cat(Const(0, 31), sign2.sig),
                  Mux(ovf.sig, Cat(Const(F32_INF, 31), sign2.sig), rounded)))
    return p.reg(out, s + 2, "mul")


def fadd(p: Pipe, a: Val, b: Val) -> Val:
    """binary32 ``a + b``, RNE, IEEE subnormals and signed zeros, +-inf on overflow.

    3 stages: (1) order by magnitude, align the smaller significand (3 extra bits: guard, round,
    sticky); (2) add/subtract, leading-zero count; (3) normalize (left by the count, limited to
    the subnormal floor, or right by one on a carry), round half to even, pack.
    """
    m = p.m
    s, (x, y) = p.align(a, b)
    swap = x[:31] < y[:31]
    big = Mux(swap, y, x)
    small = Mux(swap, x, y)
    sb, _, _, mb, eb = _fields(big)
    ss, _, _, ms, es = _fields(small)
    d = Signal(range(32), name=f"{p.name}_ad{p._n}")
    m.d.comb += d.eq(Mux(eb - es > 31, 31, eb - es))
    wide = Signal(35 + 24, name=f"{p.name}_aw{p._n}")
    m.d.comb += wide.eq((Cat(Const(0, 35), ms)) >> d)
    # wide = (ms << 35) >> d: bits [32:59] are the aligned significand with 3 extra bits (guard,
    # round, sticky); everything shifted below bit 32 is folded into the sticky bit (bit 32)
    aligned = Cat(wide[32] | (wide[:32] != 0), wide[33:59])
    nan = p.reg(is_nonfinite(x) | is_nonfinite(y), s, "anan")
    big_ext = p.reg(Cat(Const(0, 3), mb), s, "abig")
    small_ext = p.reg(aligned, s, "asmall")
    sub = p.reg(sb ^ ss, s, "asub")
    sgn = p.reg(sb, s, "asgn")
    zsgn = p.reg(sb & ss, s, "azs")
    ebig = p.reg(eb, s, "aeb")
    # ---- stage 2
    s2 = s + 1
    total = Signal(28, name=f"{p.name}_asum{p._n}")
    m.d.comb += total.eq(Mux(sub.sig, big_ext.sig - small_ext.sig, big_ext.sig + small_ext.sig))
    lz = lzc(m, total[:27], 27, name=f"{p.name}_alz{p._n}")
    tot = p.reg(total, s2, "asum")
    lz2 = p.reg(lz, s2, "alz")
    nan2, sgn2, zsgn2, eb2 = (p.reg(v.sig, s2, "ap") for v in (nan, sgn, zsgn, ebig))
    # ---- stage 3
    t, l, e = tot.sig, lz2.sig, eb2.sig
    carry = t[27]
    shl = Signal(range(32), name=f"{p.name}_ashl{p._n}")
    m.d.comb += shl.eq(Mux(l < e, l, e - 1))
    # bit 26 (the hidden bit) is not kept: the exponent field ``be`` carries it
    norm = Signal(26, name=f"{p.name}_anorm{p._n}")
    m.d.comb += norm.eq(Mux(carry, Cat(t[1] | t[0], t[2:28]), (t[:27] << shl)[:27]))
    be = Signal(10, name=f"{p.name}_abe{p._n}")
    m.d.comb += be.eq(Mux(carry, e + 1, Mux(l < e, e - l, 0)))
    rounded = _round_pack(m, norm[3:26], norm[2], norm[1] | norm[0], be, sgn2.sig)
    out = Mux(nan2.sig, F32_QNAN,
              Mux(t == 0, Cat(Const(0, 31), zsgn2.sig),
                  Mux(be >= 255, Cat(Const(F32_INF, 31), sgn2.sig), rounded)))
    return p.reg(out, s + 2, "add")


def fsub(p: Pipe, a: Val, b: Val) -> Val:
    """binary32 ``a - b`` = ``a + (-b)`` (exactly IEEE subtraction), 3 stages."""
    return fadd(p, a, fneg(p, b))


def f2i(p: Pipe, a: Val, width: int, lo: int, hi: int, scale_exp: int = 0) -> Val:
    """binary32 ``a * 2^scale_exp`` -> signed integer, round half to even, saturating to [lo, hi].

    The power-of-two pre-scale is exact (it only moves the binary point), so this equals
    ``clamp(round_half_even(a * 2^scale_exp), lo, hi)`` as long as ``a * 2^scale_exp`` is
    representable (true at every call site). NaN/Inf saturate (outside the contract).
    Output ``signed(width)``. 2 stages: (1) align with guard/sticky; (2) round, negate, saturate.
    """
    m = p.m
    s, (x,) = p.align(a)
    sx, be, _, mant, eff = _fields(x)
    # value = mant * 2^(eff - 150 + scale_exp); integer = mant >> rs or mant << ls
    exp_lsb = Signal(signed(11), name=f"{p.name}_fe{p._n}")
    m.d.comb += exp_lsb.eq(eff - 150 + scale_exp)
    span = width + 1  # a left shift by more than this saturates anyway
    big = Signal(24 + span + 1, name=f"{p.name}_fbig{p._n}")
    ls = Signal(range(span + 1), name=f"{p.name}_fls{p._n}")
    m.d.comb += ls.eq(Mux(exp_lsb > span, span, Mux(exp_lsb < 0, 0, exp_lsb)))
    m.d.comb += big.eq(mant << ls)
    rs = Signal(range(27), name=f"{p.name}_frs{p._n}")
    m.d.comb += rs.eq(Mux(exp_lsb >= 0, 0, Mux(exp_lsb < -26, 26, -exp_lsb)))
    r = Signal(50, name=f"{p.name}_fr{p._n}")
    m.d.comb += r.eq(Cat(Const(0, 26), mant) >> rs)
    intpart = Mux(exp_lsb >= 0, big, r[26:])
    guard = Mux(exp_lsb >= 0, 0, r[25])
    sticky = Mux(exp_lsb >= 0, 0, r[:25] != 0)
    mag = p.reg(intpart, s, "fmag")
    g = p.reg(guard, s, "fg")
    st = p.reg(sticky, s, "fst")
    neg = p.reg(sx, s, "fneg")
    sat = p.reg(is_nonfinite(x) | (exp_lsb > span), s, "fsat")
    # ---- stage 2
    mg = mag.sig
    up = g.sig & (st.sig | mg[0])
    rounded = Signal(signed(len(mg) + 2), name=f"{p.name}_frnd{p._n}")
    m.d.comb += rounded.eq(Mux(neg.sig, -(mg + up), mg + up))
    satv = Mux(neg.sig, lo, hi)
    out = Mux(sat.sig, satv, Mux(rounded > hi, hi, Mux(rounded < lo, lo, rounded)))
    return p.reg(out.as_signed()[:width].as_signed(), s + 1, "f2i")


def i2f(p: Pipe, n: Val, lsb_exp: int = 0) -> Val:
    """Integer ``n * 2^lsb_exp`` -> binary32, one RNE rounding (signed ``n`` if its shape is signed).

    The caller guarantees that nonzero results are normal binary32 values (checked by the unit
    tests at the call sites' extremes). ``n == 0`` gives +0. 2 stages: (1) magnitude + leading-zero
    count; (2) normalize, round half to even (carry into the exponent), pack.
    """
    m = p.m
    s, (x,) = p.align(n)
    w = len(x)
    signed_in = x.shape().signed
    neg = x[w - 1] if signed_in else Const(0, 1)
    mag_e = Mux(neg, -x, x) if signed_in else x
    mag = Signal(w, name=f"{p.name}_imag{p._n}")
    m.d.comb += mag.eq(mag_e)
    lz = lzc(m, mag, w, name=f"{p.name}_ilz{p._n}")
    mag1 = p.reg(mag, s, "imag")
    lz1 = p.reg(lz, s, "ilz")
    neg1 = p.reg(neg, s, "ineg")
    # ---- stage 2: leading one to bit w-1, then keep the top 24 bits
    wn = max(w, 26)
    # the leading one (bit wn - 1) is implied by the exponent: only the bits below it are kept
    norm = Signal(wn - 1, name=f"{p.name}_inorm{p._n}")
    m.d.comb += norm.eq((mag1.sig << lz1.sig)[:w] << (wn - w))
    keep = norm[wn - 24:]
    guard = norm[wn - 25]
    sticky = norm[:wn - 25] != 0
    be = Signal(signed(12), name=f"{p.name}_ibe{p._n}")
    m.d.comb += be.eq(127 + lsb_exp + (w - 1) - lz1.sig)
    rounded = _round_pack(m, keep, guard, sticky, be[:8], neg1.sig)
    return p.reg(Mux(mag1.sig == 0, 0, rounded), s + 1, "i2f")


def f2h(p: Pipe, a: Val) -> Val:
    """binary32 -> binary16 bits (``unsigned(16)``): clamp to +-65504, round half to even.

    Equals torch ``x.clamp(-65504, 65504).to(torch.float16)``: binary16 subnormals are produced
    (gradual underflow), ``-0`` stays ``-0``, NaN/Inf inputs saturate (outside the contract).
    2 stages: (1) saturate test and alignment shift with guard/sticky; (2) round, pack.
    """
    m = p.m
    s, (x,) = p.align(a)
    sx, be, _, mant, eff = _fields(x)
    sat = x[:31] >= f32_bits(F16_MAX)
    # half LSB weight 2^-24 for subnormals; shift = 13 for normal halves (be >= 113), else 126-eff
    rs = Signal(range(64), name=f"{p.name}_hrs{p._n}")
    m.d.comb += rs.eq(Mux(be >= 113, 13, Mux(126 - eff > 40, 40, 126 - eff)))
    # the half's 10 fraction bits over 40 guard / sticky bits; the leading one of a normal half
    # (bit 50) is implied by hbe, and the bits above it are never set
    r = Signal(40 + 10, name=f"{p.name}_hr{p._n}")
    m.d.comb += r.eq(Cat(Const(0, 40), mant) >> rs)
    keep = p.reg(r[40:50], s, "hk")
    g = p.reg(r[39], s, "hg")
    st = p.reg(r[:39] != 0, s, "hst")
    hbe = p.reg(Mux(be >= 113, be - 112, 0)[:5], s, "hbe")
    sat1 = p.reg(sat, s, "hsat")
    sg = p.reg(sx, s, "hs")
    k = keep.sig
    up = g.sig & (st.sig | k[0])
    packed = Signal(15, name=f"{p.name}_hp{p._n}")
    m.d.comb += packed.eq(Cat(k[:10], hbe.sig) + up)
    out = Mux(sat1.sig, Cat(Const(F16_MAX_BITS, 15), sg.sig), Cat(packed[:15], sg.sig))
    return p.reg(out, s + 1, "f2h")


def fceil(p: Pipe, a: Val) -> Val:
    """binary32 ``ceil(a)`` as binary32 (exact; ``ceil(-0.5) = -0``, ``ceil(0.5) = 1``), 2 stages.

    Values with ``|a| >= 2^23`` are integral already and pass through.
    """
    m = p.m
    s, (x,) = p.align(a)
    sx, be = x[31], x[23:31]
    # number of fraction bits below the binary point: 150 - be (for 127 <= be < 150)
    fb = Signal(range(32), name=f"{p.name}_cfb{p._n}")
    m.d.comb += fb.eq(Mux(be >= 150, 0, Mux(be < 127, 24, 150 - be)))
    mask = Signal(31, name=f"{p.name}_cmask{p._n}")  # fb <= 24: bit 31 is never set
    m.d.comb += mask.eq((Const(1, 33) << fb)[:32] - 1)
    xr = p.reg(x, s, "cx")
    fb1 = p.reg(fb, s, "cfb")
    frac_nz = p.reg(Mux(be < 127, x[:31] != 0, (x[:23] & mask[:23]) != 0), s, "cfnz")
    small = p.reg(be < 127, s, "csm")
    mask1 = p.reg(mask, s, "cm")
    # ---- stage 2
    xs = xr.sig
    trunc = Cat(xs[:31] & ~mask1.sig[:31], xs[31])
    # positive with a fraction: truncate and add one unit of 2^0 (carry into the exponent is exact)
    one_ulp = (Const(1, 33) << fb1.sig)[:32]
    pos_up = Mux(small.sig, F32_ONE, trunc + one_ulp)
    out = Mux(~frac_nz.sig, xs,
              Mux(xs[31], Mux(small.sig, Const(0x80000000, 32), trunc), pos_up))
    return p.reg(out, s + 1, "ceil")


def scale_pow2(p: Pipe, v: Val, k: Val) -> Val:
    """``v * 2^k`` for positive normal ``v`` by exponent addition; +0 if the exponent field would
    drop below 1 (the golden ``_scale_pow2``). ``k`` signed; the caller keeps ``be + k <= 254``.
    1 stage."""
    s, (x, kk) = p.align(v, k)
    be = x[23:31].as_unsigned() + kk.as_signed()
    out = Mux(be >= 1, Cat(x[:23], be[:8], x[31]), 0)
    return p.reg(out, s, "sp2")


def rom(p: Pipe, values: list[int], width: int, index: Val, name: str = "rom") -> Val:
    """Registered look-up ``values[index]`` (a LUT/ROM of constants), 1 stage."""
    s, (i,) = p.align(index)
    arr = Array(Const(v, width) for v in values)
    return p.reg(arr[i], s, name)


# ----------------------------------------------------------------------------------------------
# stream wrapper for element-wise pipelines
# ----------------------------------------------------------------------------------------------
class StreamPipeline:
    """Connects a :class:`Pipe` dataflow between an input and an output stream (stall together).

    The pipeline advances (``en``) whenever its output register is empty or being read, so it
    holds one element per stage, runs at one element per cycle without stalls and never drops
    data. ``i.ready`` depends combinationally on ``o.ready`` (one AND gate and an OR).

    Usage: ``sp = StreamPipeline(m, i, o, name)``; build values from ``sp.p.input(...)`` at stage 0;
    then ``sp.finish({field: Val})`` assigns the output payload fields (``Val`` aligned to the
    deepest one) and returns the latency.
    """

    def __init__(self, m: Module, i, o, name: str, gate: Value | None = None):
        self.m, self.i, self.o = m, i, o
        self.en = Signal(name=f"{name}_en")
        # ``gate`` (optional) holds the input back without stalling the elements already inside
        self.gate = Const(1, 1) if gate is None else gate
        m.d.comb += self.en.eq(~o.valid | o.ready)
        m.d.comb += i.ready.eq(self.en & self.gate)
        self.p = Pipe(m, self.en, name)

    def finish(self, outputs: dict) -> int:
        depth = max(v.stage for v in outputs.values() if v.stage is not None)
        m = self.m
        for name, v in outputs.items():
            m.d.comb += getattr(self.o.payload, name).eq(self.p.at(v, depth))
        valid = self.p.input(self.i.valid & self.gate)
        m.d.comb += self.o.valid.eq(self.p.at(valid, depth))
        return depth


# ----------------------------------------------------------------------------------------------
# iterative divider
# ----------------------------------------------------------------------------------------------
class Float32Div(wiring.Component):
    """Correctly rounded binary32 division ``a / b`` (RNE), radix-2 restoring, one bit per cycle.

    Contract: ``a`` and ``b`` finite normal binary32 (either sign) and a quotient in the normal
    range; otherwise ``o.payload.err`` is set and the quotient is undefined. (The NPE divides
    once per token: ``127 / amax`` with ``amax`` in [1e-5, 3.4e38] is always inside.)

    Ports
    -----
    i : In(stream.Signature(StructLayout(a=32, b=32)))
    o : Out(stream.Signature(StructLayout(q=32, err=1)))

    Timing
    ------
    ``LATENCY`` = 29 cycles from the accepted operands to a valid quotient (1 load, 27 quotient
    bits, 1 round/pack); not pipelined: a new division is accepted after the quotient is read.
    """

    LATENCY = 29
    QBITS = 27

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"a": 32, "b": 32}))),
            "o": Out(stream.Signature(data.StructLayout({"q": 32, "err": 1}))),
        })

    def elaborate(self, platform):
        m = Module()
        a, b = self.i.payload.a, self.i.payload.b
        rem = Signal(26)   # < 2 * divisor
        dvs = Signal(24)  # divisor significand
        q = Signal(self.QBITS)
        count = Signal(range(self.QBITS + 1))
        exp = Signal(signed(11))
        sign = Signal()
        err = Signal()

        def bad(x):
            return (x[23:31] == 0) | (x[23:31] == F32_EXP_MAX)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [
                        rem.eq(Cat(a[:23], 1)), dvs.eq(Cat(b[:23], 1)), q.eq(0),
                        count.eq(self.QBITS), exp.eq(a[23:31] - b[23:31]),
                        sign.eq(a[31] ^ b[31]), err.eq(bad(a) | bad(b)),
                    ]
                    m.next = "DIV"
            with m.State("DIV"):
                ge = rem >= dvs
                nrem = Mux(ge, rem - dvs, rem)
                m.d.sync += [rem.eq(nrem << 1), q.eq(Cat(ge, q[:-1])), count.eq(count - 1)]
                with m.If(count == 1):
                    m.next = "ROUND"
            with m.State("ROUND"):
                # q = floor(ma * 2^26 / mb) in [2^25, 2^27); rem != 0 -> inexact
                top = q[26]
                frac = Mux(top, q[3:26], q[2:25])
                guard = Mux(top, q[2], q[1])
                sticky = Mux(top, q[1] | q[0], q[0]) | (rem != 0)
                be = Signal(signed(12))
                m.d.comb += be.eq(exp + 126 + top)
                m.d.sync += [
                    self.o.payload.q.eq(_round_pack(m, frac, guard, sticky, be[:8], sign)),
                    self.o.payload.err.eq(err | (be < 1) | (be > 254)),
                    self.o.valid.eq(1),
                ]
                m.next = "OUT"
            with m.State("OUT"):
                with m.If(self.o.ready):
                    m.d.sync += self.o.valid.eq(0)
                    m.next = "IDLE"
        return m
