"""The instruction-driven controller: fetch, decode, dispatch, unit queues, tokens, errors, counters.

Pipeline
--------
1. **Fetch.** On ``start`` the controller latches ``prog_base``, ``prog_len`` and ``watchdog`` and
   reads the program from HBM port 0 through a read-DMA client port (``fetch``), in chunks of
   ``chunk = max(1, fetch_depth // 2)`` instructions (one 32-byte beat each), into an
   instruction FIFO of ``fetch_depth`` words. A chunk is requested only when the FIFO is sure to
   hold it (words requested but not yet decoded + chunk <= depth), so the read data never backs
   up into the AXI bus; the next chunk is requested as soon as the DMA has completed the previous
   one and there is room, i.e. fetch runs up to ``fetch_depth`` instructions ahead of dispatch.
   Words of a chunk are handed to the decoder only after the chunk's DMA completion said OK, so a
   failed fetch (HBM range, AXI error) is reported as such and its (meaningless) words are never
   decoded.
2. **Decode.** :class:`ternopu.hw.isa.InstructionDecoder` (one register stage) checks each word.
3. **Dispatch**, in program order, one instruction per cycle at most: an instruction of LD, ST,
   TLMM, PE or NPE is appended to that unit's queue (a FIFO of ``queue_depth`` entries holding
   the word and its pc; dispatch stalls while the queue is full). CTRL instructions execute in
   the dispatcher (below). ``PC`` is the index of the instruction the dispatcher is looking at.
4. **Issue.** Each unit executes its queue in order, one instruction at a time: the queue head is
   offered to the unit (``cmd.valid``) when the unit has nothing in execution and every token
   named by the head's ``wait`` mask is available; the transfer takes those tokens (one of each)
   atomically. On the unit's completion (``done``) the instruction's ``release`` tokens are
   added. Units therefore overlap freely (loads, compute, stores) and are ordered only by tokens.

Tokens
------
One counter ``cnt[p][c]`` of :data:`ternopu.hw.isa.TOKEN_COUNTER_BITS` bits per ordered pair of
different units (6 x 5 = 30 counters, CTRL included as producer and consumer), zero at start
(semantics: :data:`ternopu.hw.isa.DEPENDENCY_SEMANTICS`). In one cycle a counter may get one
increment (a completion of ``p`` releasing ``c``) and one decrement (an issue in ``c`` waiting on
``p``); availability is judged on the value at the start of the cycle. An increment of a counter
at ``TOKEN_DEPTH`` without a decrement in the same cycle is a ``TOKEN_OVERFLOW`` error at the pc
of the releasing instruction.

CTRL instructions
-----------------
The dispatcher holds a CTRL instruction until its condition holds, then passes it in one cycle,
taking its wait tokens and giving its release tokens in that cycle:

* ``NOP``: wait tokens available.
* ``SYNC``: wait tokens available and every queue named in ``queues`` empty with no instruction
  in execution.
* ``SKIP_IF``: wait tokens available; if routing-bitmask bit ``2*layer + block`` equals
  ``sense``, the next ``count`` words are dropped without being executed *or checked* (they are
  jumped over; their pcs still advance ``PC``).
* ``END``: wait tokens available and every queue empty and idle; the run then ends with
  ``done`` once the fetch DMA is idle (prefetched words after END are discarded).

The routing bitmask (512 bits) is cleared at ``start`` and written through ``mask`` (ROUTER on
the PE unit); units that read it (KV_PREFETCH) get it on ``bitmask``.

Errors
------
Sources, with the ERROR_PC each reports (if several arise in one cycle, the first in this list
wins; after the first error no later one is recorded):

1. ``PROG_ALIGN`` at start, pc 0: ``prog_base`` not 32-byte aligned.
2. A unit's completion code (``HBM_RANGE``, ``BUF_RANGE``, ``SHAPE``, ``AXI_RESP``, ...): the pc
   of the instruction that unit was executing (units in :class:`ternopu.hw.isa.Unit` order).
3. ``TOKEN_OVERFLOW``: the pc of the releasing instruction.
4. Decode errors (``ILLEGAL_OPCODE`` .. ``DEPENDENCY``): the word's pc, when the dispatcher
   reaches it (words before it have been dispatched).
5. ``PC_RANGE``: the dispatcher needs the word at pc ``PROG_LEN`` (the program ran out without
   END, possibly through a SKIP_IF); reported pc = ``PROG_LEN``. ``PROG_LEN = 0`` gives
   PC_RANGE at pc 0.
6. Fetch errors: DMA range error -> ``HBM_RANGE``, SLVERR/DECERR -> ``AXI_RESP``; pc = first
   instruction of the failed chunk.
7. ``WATCHDOG``: ``watchdog`` consecutive cycles without progress (see below); pc = the oldest
   instruction that has not completed (smallest pc among instructions in execution, queued
   instructions and the dispatcher's).

On an error the controller **stops**: no more fetch requests, dispatch or issue; queued and
prefetched instructions are discarded; ``abort`` is raised to every unit and the instructions in
execution are **drained** (a unit ends as soon as it safely can; DMA transfers in flight finish,
AXI bursts cannot be cancelled); their completions release no tokens. When everything is idle
the controller pulses ``error`` with the latched code and pc (so STATUS.error rises together with
STATUS.busy falling, and a new ``start`` always finds an idle machine). ``soft_reset`` stops a run
the same way but reports nothing; afterwards (as after every run) ``start`` clears the tokens, the
bitmask and the pc, so a clean rerun behaves exactly like a first run. ``start`` while busy is
ignored.

If the drain itself makes no progress for ``watchdog`` cycles (a unit that ignores ``abort``),
the controller pulses ``unit_reset`` (the overlay resets the unit slots with it), forgets the
instructions in execution and ends the run with the latched error (``WATCHDOG`` if there was
none, e.g. a soft reset). Nothing can hang.

Watchdog
--------
Progress events: a fetch command, beat or completion; the dispatcher passing a word; an issue or
completion in any unit; a unit's ``progress`` output. ``idle_run`` counts consecutive running
cycles without any of them; the run ends with ``WATCHDOG`` in the cycle where a progress-free
cycle would make ``idle_run`` reach the latched ``watchdog`` value (``watchdog`` 0 and 1 both
end a run at its first progress-free cycle). So any wait -- tokens that never come, a queue that
never drains, a memory response that never arrives, a hung unit -- ends after ``watchdog``
cycles.

Counters (outputs, one bit per cycle, summed by the CSR block)
--------------------------------------------------------------
* ``cnt_cycles``: the controller is busy (from the ``start`` cycle's successor to the cycle
  ``done``/``error`` is pulsed, drain included).
* ``cnt_busy[u]`` for LD..NPE: an instruction of ``u`` is in execution (issued, completion not
  yet taken). ``cnt_stall[u]``: running (not stopping), nothing of ``u`` in execution, and either
  its queue is non-empty (the head waits for tokens or for ``cmd.ready``) or the dispatcher is
  blocked on ``u``'s full queue. ``cnt_busy[CTRL]``: the dispatcher passed a word (dispatched,
  executed a CTRL instruction, or skipped it); ``cnt_stall[CTRL]``: it holds a word it cannot
  pass (tokens, SYNC/END conditions, a full queue).
* Per unit ``u``: ``CYCLES = BUSY[u] + STALL[u] + IDLE[u]`` where IDLE (not a counter) is the
  cycles ``u`` had nothing to do (for CTRL: waiting for fetched words, and the drain).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError

from . import isa
from .dma import DMA_ERR_DECERR, DMA_ERR_MISALIGNED, DMA_ERR_RANGE, DMA_ERR_SLVERR, DmaParams
from .unit_port import (ENGINE_UNITS, PC_BITS, UNIT_CMD_LAYOUT, DmaReadClientSignature,
                        MaskWriteSignature, UnitPortSignature)

__all__ = ["Controller", "MASK_BITS_TOTAL", "QUEUE_DEPTH", "FETCH_DEPTH", "fetch_error_code"]

#: Routing bitmask size: 2 bits per layer.
MASK_BITS_TOTAL = 2 * isa.MAX_LAYERS
#: Default unit queue depth (instructions).
QUEUE_DEPTH = 8
#: Default instruction FIFO depth (instructions fetched ahead).
FETCH_DEPTH = 32

_CTRL = int(isa.Unit.CTRL)
_NU = isa.NUM_UNITS
_OP = {name: isa.OPCODE_BY_NAME[name].number for name in ("NOP", "END", "SYNC", "SKIP_IF")}


def fetch_error_code(dma_code: int) -> isa.ErrorCode:
    """ErrorCode of a failed instruction fetch, given the DMA completion code."""
    return {DMA_ERR_RANGE: isa.ErrorCode.HBM_RANGE, DMA_ERR_SLVERR: isa.ErrorCode.AXI_RESP,
            DMA_ERR_DECERR: isa.ErrorCode.AXI_RESP,
            DMA_ERR_MISALIGNED: isa.ErrorCode.PROG_ALIGN}.get(dma_code, isa.ErrorCode.NONE)


def _dma_to_error(code):
    """RTL version of :func:`fetch_error_code`."""
    return Mux(code == DMA_ERR_RANGE, isa.ErrorCode.HBM_RANGE,
               Mux((code == DMA_ERR_SLVERR) | (code == DMA_ERR_DECERR), isa.ErrorCode.AXI_RESP,
                   Mux(code == DMA_ERR_MISALIGNED, isa.ErrorCode.PROG_ALIGN, isa.ErrorCode.NONE)))


class Controller(wiring.Component):
    """Fetch / decode / dispatch / per-unit queues with dependency tokens (module docstring).

    Parameters
    ----------
    dma : DmaParams
        Parameters of the fetch port's DMA (its ``data_width`` must be
        :data:`ternopu.hw.isa.INSTR_BITS`: one instruction per beat).
    queue_depth : int
        Entries per unit queue (>= 2).
    fetch_depth : int
        Instruction FIFO entries (>= 2); fetch chunks are half of it.

    Ports
    -----
    start, soft_reset : In(1)
        Pulses from the CSR block.
    prog_base : In(34), prog_len : In(32), watchdog : In(32)
        Latched at start.
    busy : Out(1)
        Level: a run (or its drain) is in progress.
    done, error : Out(1)
        One-cycle pulses at the end of a run; with ``error``, ``error_code`` / ``error_pc``.
    error_code : Out(8), error_pc : Out(32), pc : Out(32)
    fetch : Out(DmaReadClientSignature(dma))
        Instruction fetch through HBM port 0's read DMA.
    units : Out(UnitPortSignature()).array(5)
        Index = :class:`ternopu.hw.isa.Unit` value (LD, ST, TLMM, PE, NPE).
    mask : In(MaskWriteSignature())
        Routing-bitmask writes (ROUTER).
    bitmask : Out(512)
        The routing bitmask (bit 2*layer + block).
    unit_reset : Out(1)
        Pulse: reset the unit slots (drain timeout only).
    cnt_cycles : Out(1), cnt_busy : Out(6), cnt_stall : Out(6)
        Per-cycle counter increments (bit u = :class:`ternopu.hw.isa.Unit` u).
    """

    def __init__(self, dma: DmaParams | None = None, *, queue_depth: int = QUEUE_DEPTH,
                 fetch_depth: int = FETCH_DEPTH):
        dma = dma if dma is not None else DmaParams(data_width=isa.INSTR_BITS)
        if dma.data_width != isa.INSTR_BITS:
            raise ConfigError(f"the fetch DMA must be {isa.INSTR_BITS} bits wide (one instruction "
                              f"per beat), got {dma.data_width}")
        if not isinstance(queue_depth, int) or not 2 <= queue_depth <= 1024:
            raise ConfigError(f"queue_depth must be an int in [2, 1024], got {queue_depth!r}")
        if not isinstance(fetch_depth, int) or not 2 <= fetch_depth <= min(1024, 1 << dma.beats_width):
            raise ConfigError(f"fetch_depth must be an int in [2, 1024], got {fetch_depth!r}")
        self.dma, self.queue_depth, self.fetch_depth = dma, queue_depth, fetch_depth
        self.chunk = max(1, fetch_depth // 2)
        super().__init__({
            "start": In(1), "soft_reset": In(1),
            "prog_base": In(isa.HBM_ADDR_BITS), "prog_len": In(32), "watchdog": In(32),
            "busy": Out(1), "done": Out(1), "error": Out(1),
            "error_code": Out(isa.ErrorCode), "error_pc": Out(PC_BITS), "pc": Out(PC_BITS),
            "fetch": Out(DmaReadClientSignature(dma)),
            "units": Out(UnitPortSignature()).array(len(ENGINE_UNITS)),
            "mask": In(MaskWriteSignature()),
            "bitmask": Out(MASK_BITS_TOTAL),
            "unit_reset": Out(1),
            "cnt_cycles": Out(1), "cnt_busy": Out(_NU), "cnt_stall": Out(_NU),
        })

    def elaborate(self, platform):
        m = Module()
        NE = len(ENGINE_UNITS)

        # ------------------------------------------------------------ run state
        prog_base = Signal(isa.HBM_ADDR_BITS)
        prog_len = Signal(32)
        wd_limit = Signal(32)
        running = Signal()        # RUN: fetching / dispatching / issuing
        stopping = Signal()       # STOP: draining after END, an error or a soft reset
        stop_done = Signal()      # the stop was caused by END (report done)
        stop_quiet = Signal()     # the stop was caused by soft reset (report nothing)
        err_latched = Signal()
        err_code = Signal(isa.ErrorCode)
        err_pc = Signal(PC_BITS)
        m.d.comb += [self.busy.eq(running | stopping), self.error_code.eq(err_code),
                     self.error_pc.eq(err_pc)]

        # ------------------------------------------------------------ fetch
        depth = self.fetch_depth
        m.submodules.ififo = ififo = fifo.SyncFIFO(width=isa.INSTR_BITS, depth=depth)
        fetch_pc = Signal(32)           # next instruction index to request
        chunk_pc = Signal(32)           # first instruction of the chunk in flight
        chunk_n = Signal(range(self.chunk + 1))
        in_flight = Signal(range(depth + 1))   # requested, not yet handed to the decoder
        committed = Signal(range(depth + 1))   # in the FIFO, chunk completed OK, not yet popped
        fetch_busy = Signal()           # a fetch DMA command is outstanding
        remaining = Signal(32)
        m.d.comb += remaining.eq(prog_len - fetch_pc)
        next_n = Signal(range(self.chunk + 1))
        m.d.comb += next_n.eq(Mux(remaining < self.chunk, remaining, self.chunk))

        f = self.fetch
        # the chunk's address computed wide: a program running past 2**34 bytes is an HBM range
        # error of its own (the DMA command's address field would wrap)
        fetch_addr = Signal(isa.HBM_ADDR_BITS + 6)
        m.d.comb += fetch_addr.eq(prog_base + (fetch_pc << 5))
        fetch_want = Signal()
        fetch_oob = Signal()
        m.d.comb += [
            fetch_want.eq(running & ~fetch_busy & (remaining != 0) & (in_flight + next_n <= depth)),
            fetch_oob.eq(fetch_want & (fetch_addr[isa.HBM_ADDR_BITS:] != 0)),
            f.cmd.valid.eq(fetch_want & ~fetch_oob),
            f.cmd.payload.addr.eq(fetch_addr),
            f.cmd.payload.beats.eq(next_n),
            f.cmd.payload.rows.eq(1),
            f.cmd.payload.stride.eq(0),
            f.data.ready.eq(ififo.w_rdy | stopping),
            ififo.w_en.eq(f.data.valid & running),
            ififo.w_data.eq(f.data.payload.data),
            f.done.ready.eq(1),
        ]
        fetch_cmd = f.cmd.valid & f.cmd.ready
        fetch_beat = f.data.valid & f.data.ready
        fetch_done = f.done.valid & fetch_busy
        fetch_err = Signal()
        m.d.comb += fetch_err.eq(fetch_done & (f.done.payload != 0))
        with m.If(fetch_cmd):
            m.d.sync += [fetch_busy.eq(1), chunk_pc.eq(fetch_pc), chunk_n.eq(next_n),
                         fetch_pc.eq(fetch_pc + next_n)]
        with m.If(fetch_done):
            m.d.sync += fetch_busy.eq(0)

        # ------------------------------------------------------------ decode
        m.submodules.decoder = dec = isa.InstructionDecoder()
        pop = Signal()
        m.d.comb += [
            dec.i.valid.eq(ififo.r_rdy & ((committed != 0) | stopping)),
            dec.i.payload.eq(ififo.r_data),
            pop.eq(dec.i.valid & dec.i.ready),
            ififo.r_en.eq(pop),
        ]
        committed_add = Mux(fetch_done & ~fetch_err & running, chunk_n, 0)
        m.d.sync += [
            in_flight.eq(in_flight + Mux(fetch_cmd, next_n, 0) - pop),
            committed.eq(committed + committed_add - (pop & (committed != 0))),
        ]

        # ------------------------------------------------------------ unit queues
        queues = []
        for u in ENGINE_UNITS:
            q = fifo.SyncFIFO(width=UNIT_CMD_LAYOUT.size, depth=self.queue_depth)
            m.submodules[f"queue_{u.name.lower()}"] = q
            queues.append(q)
        executing = Signal(NE)
        exec_pc = [Signal(PC_BITS, name=f"exec_pc_{u.name.lower()}") for u in ENGINE_UNITS]
        exec_release = [Signal(_NU, name=f"exec_rel_{u.name.lower()}") for u in ENGINE_UNITS]

        # ------------------------------------------------------------ tokens
        cnt = [[Signal(isa.TOKEN_COUNTER_BITS, name=f"tok_{isa.Unit(p).name.lower()}_"
                       f"{isa.Unit(c).name.lower()}") if p != c else None
                for c in range(_NU)] for p in range(_NU)]
        inc = [[Signal(name=f"inc_{p}_{c}") if p != c else None for c in range(_NU)] for p in range(_NU)]
        dec_t = [[Signal(name=f"dec_{p}_{c}") if p != c else None for c in range(_NU)] for p in range(_NU)]

        def tokens_ok(wait_mask, consumer):
            ok = Const(1)
            for p in range(_NU):
                if p != consumer:
                    ok = ok & (~wait_mask[p] | (cnt[p][consumer] != 0))
            return ok

        # ------------------------------------------------------------ routing bitmask
        bitmask = Signal(MASK_BITS_TOTAL)
        m.d.comb += self.bitmask.eq(bitmask)
        with m.If(self.mask.we):
            m.d.sync += bitmask.bit_select(self.mask.addr, 1).eq(self.mask.bit)

        # ------------------------------------------------------------ dispatch
        disp_pc = Signal(PC_BITS)
        skip_left = Signal(12)
        m.d.comb += self.pc.eq(disp_pc)
        d = dec.o.payload
        hdr = d.instr.header
        consume = Signal()          # the dispatcher passes / drops the decoder's word
        ctrl_fire = Signal()        # a CTRL instruction executes this cycle
        end_fire = Signal()
        push = Signal(NE)           # the word goes into queue u
        blocked_on = Signal(NE)     # the word waits for queue u's space
        disp_stall = Signal()
        pc_range_err = Signal()
        decode_err = Signal()
        m.d.comb += dec.o.ready.eq(consume | stopping)

        idle_u = Signal(NE)
        for i, q in enumerate(queues):
            m.d.comb += idle_u[i].eq(~executing[i] & ~q.r_rdy)
        ctrl_tokens = tokens_ok(hdr.wait, _CTRL)
        with m.If(running):
            with m.If(skip_left != 0):
                with m.If(dec.o.valid):
                    m.d.comb += consume.eq(1)
                    m.d.sync += skip_left.eq(skip_left - 1)
                with m.Elif(disp_pc >= prog_len):
                    m.d.comb += pc_range_err.eq(1)
            with m.Elif(dec.o.valid):
                with m.If(d.error != isa.ErrorCode.NONE):
                    m.d.comb += decode_err.eq(1)
                with m.Elif(d.unit != isa.Unit.CTRL):
                    with m.Switch(d.unit):
                        for i, u in enumerate(ENGINE_UNITS):
                            with m.Case(u):
                                with m.If(queues[i].w_rdy):
                                    m.d.comb += [push[i].eq(1), consume.eq(1)]
                                with m.Else():
                                    m.d.comb += [blocked_on[i].eq(1), disp_stall.eq(1)]
                with m.Else():
                    cond = Signal()
                    with m.Switch(hdr.opcode):
                        with m.Case(_OP["SYNC"]):
                            m.d.comb += cond.eq(ctrl_tokens & (idle_u | ~d.instr.sync.queues).all())
                        with m.Case(_OP["END"]):
                            m.d.comb += cond.eq(ctrl_tokens & idle_u.all())
                        with m.Default():
                            m.d.comb += cond.eq(ctrl_tokens)
                    with m.If(cond):
                        m.d.comb += [ctrl_fire.eq(1), consume.eq(1)]
                        sk = d.instr.skip_if
                        with m.If((hdr.opcode == _OP["SKIP_IF"])
                                  & (bitmask.bit_select(Cat(sk.block, sk.layer), 1) == sk.sense)):
                            m.d.sync += skip_left.eq(sk.count)
                        with m.If(hdr.opcode == _OP["END"]):
                            m.d.comb += end_fire.eq(1)
                    with m.Else():
                        m.d.comb += disp_stall.eq(1)
            with m.Elif(disp_pc >= prog_len):
                m.d.comb += pc_range_err.eq(1)
        with m.If(consume):
            m.d.sync += disp_pc.eq(disp_pc + 1)
        for i, q in enumerate(queues):
            m.d.comb += [q.w_en.eq(push[i]), q.w_data.eq(Cat(d.instr.bits, disp_pc))]

        # ------------------------------------------------------------ issue / completion
        issue = Signal(NE)
        complete = Signal(NE)
        unit_err = Signal(NE)
        heads = []
        for i, (u, q) in enumerate(zip(ENGINE_UNITS, queues)):
            port = self.units[i]
            head = q.r_data
            head_instr = head[:isa.INSTR_BITS]
            head_pc = head[isa.INSTR_BITS:]
            heads.append(head_pc)
            head_wait = head_instr[isa.OPCODE_BITS:isa.OPCODE_BITS + isa.MASK_BITS]
            head_rel = head_instr[isa.OPCODE_BITS + isa.MASK_BITS:isa.HEADER_BITS]
            m.d.comb += [
                port.cmd.valid.eq(running & q.r_rdy & ~executing[i] & tokens_ok(head_wait, int(u))),
                port.cmd.payload.eq(head),
                issue[i].eq(port.cmd.valid & port.cmd.ready),
                q.r_en.eq(issue[i] | (stopping & q.r_rdy)),
                port.done.ready.eq(1),
                complete[i].eq(port.done.valid & executing[i]),
                unit_err[i].eq(complete[i] & (port.done.payload != isa.ErrorCode.NONE)),
                port.abort.eq(stopping & ~stop_done),
            ]
            for p in range(_NU):
                if p != int(u):
                    m.d.comb += dec_t[p][int(u)].eq(issue[i] & head_wait[p])
            for c in range(_NU):
                if c != int(u):
                    m.d.comb += inc[int(u)][c].eq(complete[i] & ~unit_err[i] & running
                                                  & exec_release[i][c])
            with m.If(issue[i]):
                m.d.sync += [executing[i].eq(1), exec_pc[i].eq(head_pc), exec_release[i].eq(head_rel)]
            with m.If(complete[i]):
                m.d.sync += executing[i].eq(0)
        for p in range(_NU):
            if p != _CTRL:
                m.d.comb += dec_t[p][_CTRL].eq(ctrl_fire & hdr.wait[p])
        for c in range(_NU):
            if c != _CTRL:
                m.d.comb += inc[_CTRL][c].eq(ctrl_fire & hdr.release[c])

        overflow = Signal()
        overflow_pc = Signal(PC_BITS)
        for p in range(_NU):
            for c in range(_NU):
                if p == c:
                    continue
                ovf = inc[p][c] & ~dec_t[p][c] & (cnt[p][c] == isa.TOKEN_DEPTH)
                with m.If(ovf):
                    m.d.comb += [overflow.eq(1),
                                 overflow_pc.eq(disp_pc if p == _CTRL else exec_pc[p])]
                with m.If(inc[p][c] & ~dec_t[p][c] & ~ovf):
                    m.d.sync += cnt[p][c].eq(cnt[p][c] + 1)
                with m.Elif(dec_t[p][c] & ~inc[p][c]):
                    m.d.sync += cnt[p][c].eq(cnt[p][c] - 1)

        # ------------------------------------------------------------ watchdog
        unit_progress = Cat(*[self.units[i].progress for i in range(NE)]).any()
        progress = Signal()
        m.d.comb += progress.eq(fetch_cmd | fetch_beat | fetch_done | consume | issue.any()
                                | complete.any() | unit_progress)
        idle_run = Signal(32)
        wd_fire = Signal()
        m.d.comb += wd_fire.eq(~progress & (idle_run + 1 >= wd_limit))
        enter_stop = Signal()   # the run stops this cycle: the drain gets a fresh watchdog period
        with m.If(progress | ~(running | stopping) | enter_stop):
            m.d.sync += idle_run.eq(0)
        with m.Else():
            m.d.sync += idle_run.eq(idle_run + 1)

        # oldest unfinished instruction (watchdog pc)
        oldest = disp_pc
        for i in range(NE):
            cand_exec = Mux(executing[i] & (exec_pc[i] < oldest), exec_pc[i], oldest)
            oldest = Mux(queues[i].r_rdy & (heads[i] < cand_exec), heads[i], cand_exec)
        oldest_pc = Signal(PC_BITS)
        m.d.comb += oldest_pc.eq(oldest)

        # ------------------------------------------------------------ error selection
        new_err = Signal()
        new_code = Signal(isa.ErrorCode)
        new_pc = Signal(PC_BITS)
        chain = []
        for i in range(NE):
            chain.append((unit_err[i], self.units[i].done.payload, exec_pc[i]))
        chain += [
            (overflow, isa.ErrorCode.TOKEN_OVERFLOW, overflow_pc),
            (decode_err, d.error, disp_pc),
            (pc_range_err, isa.ErrorCode.PC_RANGE, disp_pc),
            (fetch_err, _dma_to_error(f.done.payload), chunk_pc),
            (fetch_oob, isa.ErrorCode.HBM_RANGE, fetch_pc),
            (wd_fire, isa.ErrorCode.WATCHDOG, oldest_pc),
        ]
        with m.If(running):
            first = True
            for cond, code, pc in chain:
                ctx = m.If(cond) if first else m.Elif(cond)
                first = False
                with ctx:
                    m.d.comb += [new_err.eq(1), new_code.eq(code), new_pc.eq(pc)]

        # ------------------------------------------------------------ run control
        drained = Signal()
        m.d.comb += drained.eq(~executing.any() & ~fetch_busy & ~ififo.r_rdy & ~dec.o.valid
                               & Cat(*[~q.r_rdy for q in queues]).all())
        misaligned_base = self.prog_base[:5] != 0
        with m.If(~running & ~stopping):
            with m.If(self.start):
                m.d.sync += [
                    prog_base.eq(self.prog_base), prog_len.eq(self.prog_len),
                    wd_limit.eq(self.watchdog), disp_pc.eq(0), fetch_pc.eq(0), skip_left.eq(0),
                    bitmask.eq(0), in_flight.eq(0), committed.eq(0), err_latched.eq(0),
                    err_code.eq(0), err_pc.eq(0), stop_done.eq(0), stop_quiet.eq(0),
                ]
                for p in range(_NU):
                    for c in range(_NU):
                        if p != c:
                            m.d.sync += cnt[p][c].eq(0)
                with m.If(misaligned_base):
                    m.d.sync += [stopping.eq(1), err_latched.eq(1),
                                 err_code.eq(isa.ErrorCode.PROG_ALIGN), err_pc.eq(0)]
                with m.Else():
                    m.d.sync += running.eq(1)
            with m.Elif(self.soft_reset):
                m.d.comb += self.unit_reset.eq(1)
        with m.Elif(running):
            m.d.comb += enter_stop.eq(self.soft_reset | new_err | end_fire)
            with m.If(self.soft_reset):
                m.d.sync += [running.eq(0), stopping.eq(1), stop_quiet.eq(1)]
            with m.Elif(new_err):
                m.d.sync += [running.eq(0), stopping.eq(1), err_latched.eq(1),
                             err_code.eq(new_code), err_pc.eq(new_pc)]
            with m.Elif(end_fire):
                m.d.sync += [running.eq(0), stopping.eq(1), stop_done.eq(1)]
        with m.Else():  # stopping: drain
            with m.If(self.soft_reset):
                m.d.sync += [stop_quiet.eq(1), stop_done.eq(0)]
            timeout = ~progress & (idle_run + 1 >= wd_limit)
            with m.If(drained | timeout):
                m.d.sync += stopping.eq(0)
                with m.If(~drained):
                    # a unit ignored abort: reset the slots and give up on it
                    m.d.comb += self.unit_reset.eq(1)
                    # (a fetch DMA command still outstanding stays so: the DMA answers it
                    # later, or the next run's watchdog ends that run too)
                    m.d.sync += executing.eq(0)
                    with m.If(~err_latched):
                        m.d.sync += [err_latched.eq(1), err_code.eq(isa.ErrorCode.WATCHDOG),
                                     err_pc.eq(oldest_pc)]
                    m.d.comb += self.error.eq(1)
                with m.Elif(stop_quiet):
                    pass
                with m.Elif(err_latched):
                    m.d.comb += self.error.eq(1)
                with m.Elif(stop_done):
                    m.d.comb += self.done.eq(1)
        # the error pulse carries the latched code (timeout case: the value being latched now)
        with m.If(self.error & ~err_latched):
            m.d.comb += [self.error_code.eq(isa.ErrorCode.WATCHDOG), self.error_pc.eq(oldest_pc)]

        # ------------------------------------------------------------ counters
        m.d.comb += [self.cnt_cycles.eq(running | stopping)]
        for i, u in enumerate(ENGINE_UNITS):
            m.d.comb += [
                self.cnt_busy[int(u)].eq(executing[i]),
                self.cnt_stall[int(u)].eq(running & ~executing[i] & (queues[i].r_rdy | blocked_on[i])),
            ]
        m.d.comb += [
            self.cnt_busy[_CTRL].eq(running & consume),
            self.cnt_stall[_CTRL].eq(running & disp_stall),
        ]
        return m
