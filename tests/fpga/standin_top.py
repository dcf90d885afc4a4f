"""A small stand-in for the overlay top (``hw/overlay.py``) with the same port convention.

Ports: ``csr`` (AXI4-Lite slave, :data:`ternopu.hw.csr.CSR_ADDR_BITS` address bits), ``hbm0`` ..
``hbm{N-1}`` (AXI4 masters, or read-only masters for the indices in ``read_only``) and ``irq``.
Behaviour (enough to use every input, so the generated Verilog lints clean): writing 1 to
register 0x4 makes every master read one beat at the base address held in register 0x0 and (full
masters) write it back at ``base + 32 * port``; register 0x8 reads the done flags and a fold of
every response field, 0xC the count of register reads; ``irq`` is high while all ports are done.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ternopu.hw.axi import AXI4ReadSignature, AXI4Signature, BURST_INCR, size_code
from ternopu.hw.axi_lite import AXI4LiteSlave, axi4_lite_signature
from ternopu.hw.csr import CSR_ADDR_BITS
from ternopu.hw.overlay_config import OverlayConfig


class StandInTop(wiring.Component):
    def __init__(self, config: OverlayConfig, read_only: tuple[int, ...] = ()):
        self.config, self.read_only = config, tuple(read_only)
        members = {"csr": In(axi4_lite_signature(CSR_ADDR_BITS)), "irq": Out(1)}
        for i in range(config.hbm_ports):
            sig = AXI4ReadSignature if i in self.read_only else AXI4Signature
            members[f"hbm{i}"] = Out(sig(config.axi_data_bits, config.axi_addr_bits))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        m.submodules.slave = slave = AXI4LiteSlave(CSR_ADDR_BITS)
        wiring.connect(m, wiring.flipped(self.csr), slave.axi)
        bus = slave.bus
        base = Signal(32)
        start = Signal()
        n = cfg.hbm_ports
        done = Signal(n)
        fold = Signal(cfg.axi_data_bits)
        reads = Signal(32)  # register reads served (register 0xC)
        with m.If(bus.r_en):
            m.d.sync += reads.eq(reads + 1)
        wmask = Cat(*(bus.w_strb[i].replicate(8) for i in range(4)))
        with m.If(bus.w_en & (bus.w_addr == 0)):
            m.d.sync += base.eq((base & ~wmask) | (bus.w_data & wmask))
        m.d.comb += start.eq(bus.w_en & (bus.w_addr == 4) & bus.w_data[0] & bus.w_strb[0])
        m.d.comb += [
            bus.w_err.eq(bus.w_addr > 4),
            bus.r_err.eq(bus.r_addr > 12),
            bus.r_data.eq(Mux(bus.r_addr == 0, base, Mux(bus.r_addr == 8, Cat(done, fold.xor()),
                                                         Mux(bus.r_addr == 12, reads, 0)))),
            self.irq.eq(done.all()),
        ]
        folds = []
        for i in range(n):
            port = getattr(self, f"hbm{i}")
            writes = i not in self.read_only
            data = Signal(cfg.axi_data_bits, name=f"data{i}")
            resp = Signal(cfg.axi_data_bits, name=f"resp{i}")
            folds.append(resp)
            m.d.comb += [port.ar.addr.eq(base), port.ar.len.eq(0), port.ar.id.eq(i % 64),
                         port.ar.size.eq(size_code(cfg.axi_data_bits)), port.ar.burst.eq(BURST_INCR)]
            with m.FSM(name=f"port{i}"):
                with m.State("IDLE"):
                    with m.If(start):
                        m.d.sync += done[i].eq(0)
                        m.next = "AR"
                with m.State("AR"):
                    m.d.comb += port.ar.valid.eq(1)
                    with m.If(port.ar.ready):
                        m.next = "R"
                with m.State("R"):
                    m.d.comb += port.r.ready.eq(1)
                    with m.If(port.r.valid):
                        m.d.sync += [data.eq(port.r.data),
                                     resp.eq(resp ^ Cat(port.r.id, port.r.resp, port.r.last))]
                        with m.If(port.r.last):
                            if writes:
                                m.next = "AW"
                            else:
                                m.d.sync += done[i].eq(1)
                                m.next = "IDLE"
                if writes:
                    m.d.comb += [port.aw.addr.eq(base + 32 * i), port.aw.len.eq(0),
                                 port.aw.id.eq(i % 64), port.aw.size.eq(size_code(cfg.axi_data_bits)),
                                 port.aw.burst.eq(BURST_INCR), port.w.data.eq(data),
                                 port.w.strb.eq(-1), port.w.last.eq(1)]
                    with m.State("AW"):
                        m.d.comb += port.aw.valid.eq(1)
                        with m.If(port.aw.ready):
                            m.next = "W"
                    with m.State("W"):
                        m.d.comb += port.w.valid.eq(1)
                        with m.If(port.w.ready):
                            m.next = "B"
                    with m.State("B"):
                        m.d.comb += port.b.ready.eq(1)
                        with m.If(port.b.valid):
                            m.d.sync += [done[i].eq(1), resp.eq(resp ^ Cat(port.b.id, port.b.resp))]
                            m.next = "IDLE"
        acc = 0
        for r in folds:
            acc = acc ^ r
        m.d.comb += fold.eq(acc)
        return m
