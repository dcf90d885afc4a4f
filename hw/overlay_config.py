"""Configuration of the assembled overlay: the one place board-level parameters are defined.

The overlay top (``hw/overlay.py``), the FPGA build flows (``fpga_builds/``), the compiler and the
benchmarks all read an :class:`OverlayConfig`; nothing else hard-codes the port count, bus widths,
clock or part.

Top-level ports (Vitis RTL-kernel convention, produced by the kernel wrapper)
------------------------------------------------------------------------------
``ap_clk``, ``ap_rst_n`` (active low), ``interrupt``; ``s_axi_control_*`` (AXI4-Lite, 32-bit data,
:data:`ternopu.hw.csr.CSR_ADDR_BITS` address bits); ``m_axi_hbmNN_*`` for ``NN`` in
``00 .. hbm_ports-1`` (AXI4, ``axi_data_bits`` data, ``axi_addr_bits`` address), each connected to
HBM pseudo-channel ``NN`` by the build flow.
"""

from __future__ import annotations

from dataclasses import dataclass

from ternopu.golden.errors import ConfigError

__all__ = ["Board", "BOARDS", "OverlayConfig", "U280_DEFAULT", "V80_DEFAULT"]


@dataclass(frozen=True)
class Board:
    """A target card: part, HBM geometry and the vendor platform the build flow uses."""

    name: str
    part: str
    family: str  # "ultrascale_plus" | "versal"
    hbm_pseudo_channels: int
    hbm_bytes_per_channel: int
    hbm_peak_bytes_per_s: float
    dsp: str  # "dsp48e2" | "dsp58"
    #: Vitis platform passed to v++ (None: the card is built with a Vivado flow, no Vitis platform);
    #: overridable with ``make bitstream PLATFORM=...`` to match what is installed.
    platform: str | None


BOARDS: dict[str, Board] = {
    "u280": Board("u280", "xcu280-fsvh2892-2L-e", "ultrascale_plus", 32, 256 << 20, 460e9,
                  "dsp48e2", "xilinx_u280_gen3x16_xdma_1_202211_1"),
    "v80": Board("v80", "xcv80-lsva4737-2MHP-e-S", "versal", 32, 512 << 20, 819e9,
                 "dsp58", None),
}


@dataclass(frozen=True)
class OverlayConfig:
    """Board-level parameters of one overlay build.

    Parameters
    ----------
    board : str
        Key of :data:`BOARDS`.
    hbm_ports : int
        AXI4 master ports, each tied to one HBM pseudo-channel (1 .. the board's channel count).
    axi_data_bits : int
        Data width of every HBM AXI port (256 on the U280's HBM switch ports).
    axi_addr_bits : int
        Byte-address width of the HBM ports (34 bits address the U280's 8 GiB).
    clock_hz : float
        Design clock of the overlay for modelled figures (the RTL has no notion of time).
    """

    board: str = "u280"
    hbm_ports: int = 32
    axi_data_bits: int = 256
    axi_addr_bits: int = 34
    clock_hz: float = 300e6

    def __post_init__(self):
        if self.board not in BOARDS:
            raise ConfigError(f"board must be one of {sorted(BOARDS)}, got {self.board!r}")
        b = BOARDS[self.board]
        if not 1 <= self.hbm_ports <= b.hbm_pseudo_channels:
            raise ConfigError(f"hbm_ports must be in [1, {b.hbm_pseudo_channels}] on {b.name}, "
                              f"got {self.hbm_ports}")
        if self.axi_data_bits not in (64, 128, 256, 512):
            raise ConfigError(f"axi_data_bits must be 64, 128, 256 or 512, got {self.axi_data_bits}")
        if not 32 <= self.axi_addr_bits <= 40:
            raise ConfigError(f"axi_addr_bits must be in [32, 40], got {self.axi_addr_bits}")
        if not 50e6 <= self.clock_hz <= 800e6:
            raise ConfigError(f"clock_hz must be in [50 MHz, 800 MHz], got {self.clock_hz:g}")

    @property
    def board_info(self) -> Board:
        return BOARDS[self.board]

    @property
    def port_names(self) -> list[str]:
        """Top-level AXI master port prefixes, ``m_axi_hbm00`` ..."""
        return [f"m_axi_hbm{i:02d}" for i in range(self.hbm_ports)]

    @property
    def peak_bytes_per_cycle(self) -> float:
        """HBM bytes per design-clock cycle at the board's peak over the ports used."""
        b = self.board_info
        return b.hbm_peak_bytes_per_s * self.hbm_ports / b.hbm_pseudo_channels / self.clock_hz


U280_DEFAULT = OverlayConfig()
V80_DEFAULT = OverlayConfig(board="v80")
