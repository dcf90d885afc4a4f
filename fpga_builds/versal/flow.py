"""V80 (Versal HBM) flow files, generated per :class:`~ternopu.hw.overlay_config.OverlayConfig`.

How the V80 is built (and what is assumed)
------------------------------------------
The Alveo V80 has no Vitis platform/XRT shell: AMD ships AVED (Alveo Versal Example Design), a
Vivado block-design flow whose base design (CIPS with the PCIe/QDMA CPM, the AMC management
firmware, clocks/resets, the NoC to DDR and HBM) is built from AVED's TCL, and a user application
is added to that block design. This module therefore generates two things:

``create_project.tcl``
    A self-contained Vivado project (part from ``OverlayConfig``) whose block design holds the
    kernel (RTL module reference ``ternopu_kernel``) and one ``axi_noc`` instance that connects
    every HBM master, through an HBM NoC master unit (``HBMnn_AXI``, category ``pl_hbm``), to
    *its* pseudo-channel (mapping below); ``ap_clk`` is a block-design clock input constrained by
    ``ternopu_v80.xdc`` at the configured frequency; ``s_axi_control`` is an external interface.
    It runs synthesis and implementation to check resources and timing of the overlay with its
    NoC/HBM connectivity. It is **not** a deployable card image: it has no CIPS/PCIe.
``aved_user.tcl``
    ``ternopu::add_to_bd``: the same kernel + NoC connectivity as a procedure to call inside an
    AVED ``create_bd_design.tcl`` (after the base design exists), with the AVED NoC cell, user
    clock/reset pins and the AXI4-Lite management interface passed in by name, for a deployable
    PDI built by AVED's own ``build_hw.tcl``.

HBM mapping (assumption, from AMD's public V80 NoC description and public Versal HBM designs):
the VH1782 has two HBM2e stacks x 8 channels x 2 pseudo-channels = 32 pseudo-channels, each
reachable through two NoC HBM ports; the NoC names them ``HBM<c>_PORT<p>`` with channel
``c = 0..15`` and ``p = 0..3`` (ports 0-1 on the channel's first pseudo-channel, 2-3 on its
second). Kernel port ``i`` -> pseudo-channel ``i`` -> ``HBM<i // 2>_PORT<2 * (i % 2)>``.
Check the names against the axi_noc IP of the installed Vivado (``report_property`` of the NoC
cell) before a long run.

Addresses: the NoC decodes system addresses; the overlay issues 34-bit offsets, which the wrapper
ORs with its ``HBM_ADDR_BASE`` parameter. :data:`HBM_BASE_ASSUMED` (0x40_0000_0000) is where
Versal HBM devices map HBM in AMD's published address maps -- an assumption to check with
``assign_bd_address`` output (the script prints the assigned ranges).
"""

from __future__ import annotations

from pathlib import Path

from ternopu.golden.errors import ConfigError
from ternopu.hw.overlay_config import OverlayConfig

from .. import kernel as K

__all__ = ["VIVADO_MIN_VERSION", "HBM_BASE_ASSUMED", "NOC_HBM_PORTS_PER_CHANNEL", "noc_hbm_port",
           "noc_nmu_name", "create_project_tcl", "aved_user_tcl", "xdc", "build_sh", "write_flow"]

#: AVED releases target Vivado 2023.2 and later (labelled an assumption in the README).
VIVADO_MIN_VERSION = "2023.2"
#: System address of HBM on Versal HBM parts (assumed; see the module docstring).
HBM_BASE_ASSUMED = 0x40_0000_0000
#: NoC HBM ports per HBM channel (two pseudo-channels x two ports).
NOC_HBM_PORTS_PER_CHANNEL = 4
#: Read/write bandwidth requested per port from the NoC compiler, MB/s: one pseudo-channel's
#: share of the 819 GB/s peak (819e9 / 32 = 25.6 GB/s), split evenly between read and write
#: (decode traffic is read-dominated; the NoC compiler only needs a feasible reservation).
NOC_READ_MBPS = 12800
NOC_WRITE_MBPS = 3200
PROJECT = "ternopu_v80"
BD = "ternopu_bd"
NOC_CELL = "ternopu_hbm_noc"


def noc_hbm_port(config: OverlayConfig, port: int) -> str:
    """NoC HBM port name that kernel port ``port`` (= pseudo-channel ``port``) connects to."""
    b = config.board_info
    if not 0 <= port < config.hbm_ports:
        raise ConfigError(f"port must be in [0, {config.hbm_ports}), got {port}")
    if port >= b.hbm_pseudo_channels:
        raise ConfigError(f"{b.name} has {b.hbm_pseudo_channels} pseudo-channels, port {port} has none")
    return f"HBM{port // 2}_PORT{2 * (port % 2)}"


def noc_nmu_name(port: int) -> str:
    """Slave interface of the ``axi_noc`` cell (an HBM NMU) fed by kernel port ``port``."""
    return f"HBM{port:02d}_AXI"


def _noc_setup(config: OverlayConfig, ports: K.KernelPorts, noc: str, kernel_cell: str) -> str:
    """TCL (block-design context) configuring ``noc``'s HBM NMUs and connecting the kernel."""
    lines = [
        f"set_property -dict [list CONFIG.NUM_HBM_BLI {len(ports.masters)} CONFIG.HBM_NUM_CHNL 16] "
        f"[get_bd_cells {noc}]",
    ]
    busifs = []
    for m in ports.masters:
        nmu = noc_nmu_name(m.index)
        busifs.append(nmu)
        target = noc_hbm_port(config, m.index)
        lines += [
            f"# {m.kernel_name} -> pseudo-channel {m.index} ({target})",
            f"set_property -dict [list CONFIG.DATA_WIDTH {m.data_bits} CONFIG.CATEGORY pl_hbm "
            f"CONFIG.CONNECTIONS {{{target} {{read_bw {{{NOC_READ_MBPS}}} write_bw {{{NOC_WRITE_MBPS}}} "
            f"read_avg_burst {{64}} write_avg_burst {{64}}}}}}] [get_bd_intf_pins {noc}/{nmu}]",
            f"connect_bd_intf_net [get_bd_intf_pins {kernel_cell}/{m.kernel_name}] "
            f"[get_bd_intf_pins {noc}/{nmu}]",
        ]
    lines.append(f"set ternopu_noc_busifs {{{':'.join(busifs)}}}")
    return "\n".join(lines)


def create_project_tcl(config: OverlayConfig, ports: K.KernelPorts) -> str:
    """Standalone Vivado project: kernel + HBM NoC, synthesized and implemented (no CIPS)."""
    part = config.board_info.part
    period_ns = 1e9 / config.clock_hz
    return f"""# Generated by ternopu.fpga_builds.versal.flow -- do not edit.
# Standalone implementation check of the overlay with its HBM NoC connectivity on {part}.
# Not a deployable V80 image (no CIPS / PCIe): see aved_user.tcl and fpga_builds/README.md.
# Usage: vivado -mode batch -source create_project.tcl   (run in this directory)
set here [file dirname [file normalize [info script]]]
create_project -force {PROJECT} $here/_vivado -part {part}
add_files -norecurse [list $here/src/{K.OVERLAY_MODULE}.v $here/src/{K.KERNEL_NAME}.v]
add_files -fileset constrs_1 -norecurse $here/ternopu_v80.xdc
update_compile_order -fileset sources_1

create_bd_design {BD}
set kernel [create_bd_cell -type module -reference {K.KERNEL_NAME} ternopu_0]
set_property CONFIG.HBM_ADDR_BASE {{64'h{HBM_BASE_ASSUMED:016X}}} $kernel
create_bd_cell -type ip -vlnv xilinx.com:ip:axi_noc:1.1 {NOC_CELL}
set_property -dict [list CONFIG.NUM_SI 0 CONFIG.NUM_MI 0 CONFIG.NUM_CLKS 1] [get_bd_cells {NOC_CELL}]
{_noc_setup(config, ports, NOC_CELL, "ternopu_0")}

# Clock and reset: one kernel clock for the overlay and the NoC ports ({config.clock_hz / 1e6:g} MHz).
create_bd_port -dir I -type clk -freq_hz {int(config.clock_hz)} ap_clk
create_bd_port -dir I -type rst ap_rst_n
set_property CONFIG.POLARITY ACTIVE_LOW [get_bd_ports ap_rst_n]
connect_bd_net [get_bd_ports ap_clk] [get_bd_pins ternopu_0/ap_clk] [get_bd_pins {NOC_CELL}/aclk0]
connect_bd_net [get_bd_ports ap_rst_n] [get_bd_pins ternopu_0/ap_rst_n]
set_property CONFIG.ASSOCIATED_BUSIF $ternopu_noc_busifs [get_bd_pins {NOC_CELL}/aclk0]
make_bd_intf_pins_external [get_bd_intf_pins ternopu_0/{K.CONTROL_PORT}]
make_bd_pins_external [get_bd_pins ternopu_0/interrupt]
assign_bd_address
foreach seg [get_bd_addr_segs -of_objects [get_bd_addr_spaces ternopu_0/*]] {{
    puts "ternopu: [get_property NAME $seg] offset [get_property OFFSET $seg] range [get_property RANGE $seg]"
}}
validate_bd_design
save_bd_design
make_wrapper -files [get_files {BD}.bd] -top -import
set_property top {BD}_wrapper [current_fileset]
update_compile_order -fileset sources_1

launch_runs synth_1 -jobs 8
wait_on_run synth_1
launch_runs impl_1 -jobs 8
wait_on_run impl_1
open_run impl_1
report_utilization -file $here/reports/utilization.rpt
report_timing_summary -file $here/reports/timing_summary.rpt
puts "ternopu: implementation done, reports in $here/reports (period {period_ns:.3f} ns)"
"""


def aved_user_tcl(config: OverlayConfig, ports: K.KernelPorts) -> str:
    """Procedure adding the kernel and its HBM connectivity to an AVED block design."""
    return f"""# Generated by ternopu.fpga_builds.versal.flow -- do not edit.
# Source inside an AVED create_bd_design.tcl, after the base design exists, then call
#   ternopu::add_to_bd <noc_cell> <clk_pin> <rstn_pin> <axil_intf_pin>
# noc_cell: name of a new axi_noc cell for the overlay's HBM NMUs (the NoC compiler routes all
# axi_noc instances of the design together); clk_pin / rstn_pin: AVED's user clock
# ({config.clock_hz / 1e6:g} MHz requested) and its active-low reset; axil_intf_pin: an AXI4-Lite
# master of the management path (host BAR) for s_axi_control.
# The source files src/{K.OVERLAY_MODULE}.v and src/{K.KERNEL_NAME}.v must be added first.
namespace eval ternopu {{}}
proc ternopu::add_to_bd {{noc clk rstn axil}} {{
    set kernel [create_bd_cell -type module -reference {K.KERNEL_NAME} ternopu_0]
    set_property CONFIG.HBM_ADDR_BASE {{64'h{HBM_BASE_ASSUMED:016X}}} $kernel
    create_bd_cell -type ip -vlnv xilinx.com:ip:axi_noc:1.1 $noc
    set_property -dict [list CONFIG.NUM_SI 0 CONFIG.NUM_MI 0 CONFIG.NUM_CLKS 1] [get_bd_cells $noc]
{_indent(_noc_setup(config, ports, "$noc", "ternopu_0"), 4)}
    connect_bd_net [get_bd_pins $clk] [get_bd_pins ternopu_0/ap_clk] [get_bd_pins $noc/aclk0]
    connect_bd_net [get_bd_pins $rstn] [get_bd_pins ternopu_0/ap_rst_n]
    connect_bd_intf_net [get_bd_intf_pins $axil] [get_bd_intf_pins ternopu_0/{K.CONTROL_PORT}]
    set_property CONFIG.ASSOCIATED_BUSIF $ternopu_noc_busifs [get_bd_pins $noc/aclk0]
}}
"""


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + ln for ln in text.split("\n"))


def xdc(config: OverlayConfig) -> str:
    """Constraints of the standalone project: the kernel clock."""
    period_ns = 1e9 / config.clock_hz
    return (f"# Generated by ternopu.fpga_builds.versal.flow -- do not edit.\n"
            f"# Kernel clock: {config.clock_hz / 1e6:g} MHz.\n"
            f"create_clock -period {period_ns:.3f} -name ap_clk [get_ports ap_clk]\n")


def build_sh(config: OverlayConfig) -> str:
    return f"""#!/usr/bin/env bash
# Generated by ternopu.fpga_builds.versal.flow -- do not edit.
# Needs vivado {VIVADO_MIN_VERSION} or later with Versal HBM device support ({config.board_info.part}).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p reports
vivado -mode batch -nojournal -log create_project.log -source create_project.tcl
"""


def write_flow(config: OverlayConfig, ports: K.KernelPorts, out_dir: Path) -> list[Path]:
    """Write the V80 flow files into ``out_dir``; return their paths."""
    if config.board_info.family != "versal":
        raise ConfigError(f"the Versal flow needs a Versal board, got {config.board!r}")
    out_dir = Path(out_dir)
    files = {
        "create_project.tcl": create_project_tcl(config, ports),
        "aved_user.tcl": aved_user_tcl(config, ports),
        "ternopu_v80.xdc": xdc(config),
        "build.sh": build_sh(config),
    }
    paths = []
    for name, text in files.items():
        p = out_dir / name
        p.write_text(text)
        paths.append(p)
    (out_dir / "build.sh").chmod(0o755)
    return paths
