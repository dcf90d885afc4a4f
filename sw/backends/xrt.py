"""XRT backend: runs images on a real U280 / Versal card through pyxrt (Xilinx Runtime).

Importable everywhere: ``pyxrt`` is imported only when a device is opened, and a missing XRT
raises :class:`~ternopu.sw.device.DeviceError` with what to install. Nothing is simulated here:
without a card this backend cannot return results.

Mapping onto the card
---------------------
* The overlay is an RTL kernel (``xclbin``, from ``make bitstream``) whose AXI4-Lite control port
  is the CSR block of :mod:`ternopu.hw.csr`. Registers are accessed with ``pyxrt.ip`` (``read_register``
  / ``write_register`` at the offsets of :data:`ternopu.hw.csr.REGISTER_MAP`).
* HBM: one buffer object per pseudo-channel ``p`` (memory bank ``HBM[p]``, group id from the
  kernel's ``m_axi_hbmNN`` argument), of ``channel_bytes`` each. The overlay addresses channel
  ``p`` at ``p * channel_bytes``: :meth:`XrtDevice.load` checks that each buffer's device address
  is exactly that and refuses to run otherwise.
* ``run``: write ``PROG_BASE_LO/HI`` and ``PROG_LEN``, pulse ``CTRL.start``, poll ``STATUS`` until
  ``done`` or ``error`` (or a host timeout), then read ``ERROR_CODE`` / ``ERROR_PC``.
"""

from __future__ import annotations

import time

import numpy as np

from ternopu.hw.csr import COUNTERS, REGISTER_BY_NAME, counter_offset
from ternopu.hw.isa import ErrorCode

from ..device import Device, DeviceError, RunStatus, register_backend

__all__ = ["XrtDevice", "KERNEL_NAME", "POLL_SECONDS"]

#: Kernel instance name in the xclbin.
KERNEL_NAME = "ternopu_overlay"
#: Status polling interval.
POLL_SECONDS = 1e-4


def _reg(name: str) -> int:
    return REGISTER_BY_NAME[name].offset


class XrtDevice(Device):
    """A card opened through pyxrt.

    Parameters
    ----------
    xclbin : str
        Path of the overlay's xclbin.
    index : int
        XRT device index.
    timeout_s : float
        Host-side limit for one run (the overlay's watchdog ends hung waits on its own).
    bank_groups : list[int], optional
        XRT memory group of each pseudo-channel's buffer (default: group ``p`` for channel ``p``,
        as the connectivity file maps ``m_axi_hbmNN`` to ``HBM[NN]``; take them from
        ``pyxrt.kernel.group_id`` if the platform numbers banks differently).
    """

    name = "xrt"

    def __init__(self, xclbin: str | None = None, index: int = 0, timeout_s: float = 60.0,
                 bank_groups: list[int] | None = None):
        try:
            import pyxrt  # noqa: F401
        except ImportError:
            raise DeviceError("the xrt backend needs the Xilinx Runtime's Python bindings (pyxrt): install "
                              "XRT and source /opt/xilinx/xrt/setup.sh; use --backend golden to "
                              "simulate instead") from None
        if not xclbin:
            raise DeviceError("the xrt backend needs the overlay's xclbin (--xclbin PATH)")
        self._pyxrt = pyxrt
        try:
            self.dev = pyxrt.device(index)
            self.uuid = self.dev.load_xclbin(pyxrt.xclbin(str(xclbin)))
            self.ip = pyxrt.ip(self.dev, self.uuid, f"{KERNEL_NAME}:{{{KERNEL_NAME}_1}}")
        except Exception as e:  # pyxrt raises RuntimeError subclasses with the driver's message
            raise DeviceError(f"xrt: cannot open device {index} with {xclbin}: {e}") from None
        self.timeout_s = timeout_s
        self.bank_groups = bank_groups
        self.bos: list = []
        self.geo = None

    def load(self, image) -> None:
        pyxrt = self._pyxrt
        self.geo = image.plan.geo
        self.bos = []
        for p in range(self.geo.ports):
            group = self.bank_groups[p] if self.bank_groups else p
            bo = pyxrt.bo(self.dev, self.geo.channel_bytes, pyxrt.bo.normal, group)
            if bo.address() != p * self.geo.channel_bytes:
                raise DeviceError(f"xrt: HBM[{p}] buffer at device address {bo.address():#x}, the overlay "
                                  f"expects {p * self.geo.channel_bytes:#x} (check the connectivity file)")
            self.bos.append(bo)
        for p, data in enumerate(image.channels):
            if data.size:
                self._bo_write(p, 0, data.tobytes())

    def _bo_write(self, port: int, local: int, data: bytes) -> None:
        bo = self.bos[port]
        bo.write(data, local)
        bo.sync(self._pyxrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, len(data), local)

    def _spans(self, addr: int, nbytes: int):
        while nbytes > 0:
            ch, local = self.geo.split(addr)
            n = min(nbytes, self.geo.channel_bytes - local)
            yield ch, local, n
            addr, nbytes = addr + n, nbytes - n

    def write(self, addr: int, data: bytes) -> None:
        data = bytes(data)
        off = 0
        for ch, local, n in self._spans(addr, len(data)):
            self._bo_write(ch, local, data[off:off + n])
            off += n

    def read(self, addr: int, nbytes: int) -> bytes:
        out = bytearray()
        for ch, local, n in self._spans(addr, nbytes):
            bo = self.bos[ch]
            bo.sync(self._pyxrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE, n, local)
            out += bytes(np.asarray(bo.read(n, local), dtype=np.uint8))
        return bytes(out)

    def run(self, prog_addr: int, n_instr: int) -> RunStatus:
        ip = self.ip
        ip.write_register(_reg("PROG_BASE_LO"), prog_addr & 0xFFFFFFFF)
        ip.write_register(_reg("PROG_BASE_HI"), prog_addr >> 32)
        ip.write_register(_reg("PROG_LEN"), n_instr)
        ip.write_register(_reg("CTRL"), 1)  # start
        t0 = time.monotonic()
        while True:
            status = ip.read_register(_reg("STATUS"))
            if status & 0b110:
                break
            if time.monotonic() - t0 > self.timeout_s:
                raise DeviceError(f"xrt: no done/error after {self.timeout_s} s (STATUS={status:#x})")
            time.sleep(POLL_SECONDS)
        done, error = bool(status & 0b010), bool(status & 0b100)
        code = ErrorCode(ip.read_register(_reg("ERROR_CODE")) & 0xFF) if error else ErrorCode.NONE
        pc = ip.read_register(_reg("ERROR_PC")) if error else -1
        return RunStatus(done and not error, code, pc, "reported by the card" if error else "", self.counters())

    def counters(self) -> dict[str, int]:
        out = {}
        for name, _ in COUNTERS:
            off = counter_offset(name)
            lo = self.ip.read_register(off)
            hi = self.ip.read_register(off + 4)
            out[name] = hi << 32 | lo
        return out

    def close(self) -> None:
        self.bos = []


register_backend("xrt", XrtDevice)
