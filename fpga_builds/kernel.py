"""The overlay as a Vitis RTL kernel: generated Verilog, the ``ternopu_kernel`` wrapper and kernel.xml.

What is generated (by :func:`generate_kernel`)
---------------------------------------------
``ternopu_overlay.v``
    Verilog of the Amaranth top component (module :data:`OVERLAY_MODULE`), with
    ``(* ram_style = "ultra" *)`` added to every inferred memory of at least
    :data:`URAM_MIN_BITS` bits and :data:`URAM_MIN_DEPTH` words (the KV history buffer and the
    other big, deep buffers go to URAM288; the others are left to Vivado's inference, i.e. block
    RAM or LUTRAM).
``ternopu_kernel.v``
    The wrapper (module :data:`KERNEL_NAME`) with the Vitis RTL-kernel port names:
    ``ap_clk``, ``ap_rst_n`` (active low, synchronous), ``interrupt``, ``s_axi_control_*``
    (AXI4-Lite, :data:`ternopu.hw.csr.CSR_ADDR_BITS` address bits, 32-bit data) and one
    ``m_axi_hbmNN_*`` AXI4 master per HBM port (64-bit addresses as Vitis requires: the overlay's
    address is zero-extended and OR-ed with the ``HBM_ADDR_BASE`` parameter, default 0).
``kernel.xml``
    The RTL-kernel description ``package_xo`` needs: one ``s_axi_control`` slave port, one
    master port per HBM port, scalar args ``prog_base`` / ``prog_len`` at their CSR offsets and one
    pointer arg ``hbmNN`` per master port.
``ports.json``
    The port mapping (overlay name -> kernel name) the tests and the TCL generators read.

Port discovery
--------------
The Amaranth top must have (names free, roles found from the signature):

* exactly one AXI4-Lite slave (``In(axi4_lite_signature(CSR_ADDR_BITS))``, flattened as
  ``<name>__aw__valid`` ...): becomes ``s_axi_control``;
* ``N >= 1`` AXI4 masters (``Out(AXI4Signature(...))`` or read-only
  ``Out(AXI4ReadSignature(...))``): ordered by the number at the end of their name (``hbm0``,
  ``hbm1``, ... or ``m0`` ...), they become ``m_axi_hbm00 ..`` and must number
  ``OverlayConfig.hbm_ports``. A read-only master gets its write channels tied off in the wrapper
  (``awvalid = wvalid = 0``, ``bready = 1``);
* optionally one 1-bit output named ``irq`` or ``interrupt``: becomes ``interrupt`` (else tied 0).

Anything else on the top is a :class:`~ternopu.golden.errors.ConfigError`.

Reset: Amaranth's ``rst`` is active-high and synchronous; the wrapper registers ``~ap_rst_n``
twice (a reset pipeline for fan-out; Vitis holds ``ap_rst_n`` low for many cycles, so the two
cycles of delay lose nothing).

Execution model: the kernel is *user managed* (kernel.xml ``hwControlProtocol="user_managed"``):
the CSR block is not the ``ap_ctrl_hs`` register layout, so the host drives it through
``xrt::ip`` register reads/writes (start = ``CTRL.start`` at 0x008). The pointer args occupy
:data:`POINTER_ARG_BASE` + 8*i, a range the CSR block does not decode; XRT does not write them for
user-managed kernels: they exist so that ``v++`` can associate each buffer with its port.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from amaranth.hdl import Shape

from ternopu.golden.errors import ConfigError
from ternopu.hw import csr
from ternopu.hw.overlay_config import OverlayConfig

from .aliases import mark_alias_wires

__all__ = [
    "KERNEL_NAME", "INSTANCE_NAME", "OVERLAY_MODULE", "IP_VENDOR", "IP_LIBRARY", "IP_VERSION",
    "VITIS_ADDR_BITS", "POINTER_ARG_BASE", "URAM_MIN_BITS", "URAM_MIN_DEPTH", "CONTROL_PORT", "SCALAR_ARGS",
    "MasterPort", "KernelPorts", "discover_ports", "wrapper_verilog", "kernel_xml",
    "annotate_uram", "overlay_verilog", "KernelFiles", "generate_kernel", "kernel_port_names",
]

#: Name of the RTL kernel (top module of the wrapper, ``kernel_name`` of ``package_xo``).
KERNEL_NAME = "ternopu_kernel"
#: Compute-unit name used in connectivity files (``nk=ternopu_kernel:1:ternopu_1``).
INSTANCE_NAME = "ternopu_1"
#: Module name of the overlay's generated Verilog.
OVERLAY_MODULE = "ternopu_overlay"
IP_VENDOR, IP_LIBRARY, IP_VERSION = "ternopu.org", "kernel", "1.0"
#: Vitis requires 64-bit addresses on every m_axi port.
VITIS_ADDR_BITS = 64
#: s_axi_control offset of the first pointer arg (8 bytes per arg; above the counter array).
POINTER_ARG_BASE = 0x400
#: Memories of at least this many bits *and* :data:`URAM_MIN_DEPTH` words get
#: ``ram_style = "ultra"``. A URAM288 is 4096 x 72 bits with a fixed depth: a shallow, wide memory
#: would use a fraction of each URAM's depth (a BRAM36 can be 512 x 72), a small one a fraction of
#: a whole URAM; deep, large buffers (the KV history buffer) fill URAMs well.
URAM_MIN_BITS = 72 * 1024
URAM_MIN_DEPTH = 2048
#: The kernel's AXI4-Lite control interface name (required by Vitis).
CONTROL_PORT = "s_axi_control"
#: Scalar kernel args (name, CSR register of the low word, bytes): the program to run.
SCALAR_ARGS: tuple[tuple[str, str, int], ...] = (
    ("prog_base", "PROG_BASE_LO", 8),
    ("prog_len", "PROG_LEN", 4),
)

# AXI4-Lite fields: (amaranth channel, field, vitis suffix, direction seen from the kernel).
_LITE_FIELDS = (
    ("aw", "valid", "awvalid", "input"), ("aw", "ready", "awready", "output"),
    ("aw", "addr", "awaddr", "input"),
    ("w", "valid", "wvalid", "input"), ("w", "ready", "wready", "output"),
    ("w", "data", "wdata", "input"), ("w", "strb", "wstrb", "input"),
    ("b", "valid", "bvalid", "output"), ("b", "ready", "bready", "input"),
    ("b", "resp", "bresp", "output"),
    ("ar", "valid", "arvalid", "input"), ("ar", "ready", "arready", "output"),
    ("ar", "addr", "araddr", "input"),
    ("r", "valid", "rvalid", "output"), ("r", "ready", "rready", "input"),
    ("r", "data", "rdata", "output"), ("r", "resp", "rresp", "output"),
)
# AXI4 master fields, direction seen from the kernel (master).
_READ_FIELDS = (
    ("ar", "valid", "output"), ("ar", "ready", "input"), ("ar", "id", "output"),
    ("ar", "addr", "output"), ("ar", "len", "output"), ("ar", "size", "output"),
    ("ar", "burst", "output"),
    ("r", "valid", "input"), ("r", "ready", "output"), ("r", "id", "input"),
    ("r", "data", "input"), ("r", "resp", "input"), ("r", "last", "input"),
)
_WRITE_FIELDS = (
    ("aw", "valid", "output"), ("aw", "ready", "input"), ("aw", "id", "output"),
    ("aw", "addr", "output"), ("aw", "len", "output"), ("aw", "size", "output"),
    ("aw", "burst", "output"),
    ("w", "valid", "output"), ("w", "ready", "input"), ("w", "data", "output"),
    ("w", "strb", "output"), ("w", "last", "output"),
    ("b", "valid", "input"), ("b", "ready", "output"), ("b", "id", "input"),
    ("b", "resp", "input"),
)


@dataclass(frozen=True)
class MasterPort:
    """One AXI4 master of the overlay and its kernel-level name."""

    overlay_name: str  # Amaranth member name, e.g. "hbm3"
    kernel_name: str  # "m_axi_hbm03"
    index: int  # HBM port index (= pseudo-channel it is connected to)
    data_bits: int
    addr_bits: int
    id_bits: int
    writes: bool  # False: read-only master, write channels tied off in the wrapper


@dataclass(frozen=True)
class KernelPorts:
    """The roles of the overlay's top-level members."""

    control: str  # AXI4-Lite slave member name
    control_addr_bits: int
    masters: tuple[MasterPort, ...]
    irq: str | None  # 1-bit interrupt output member, if any
    fields: dict = field(default_factory=dict, compare=False)  # (member, chan, field) -> width


def _flat(component) -> dict[tuple[str, ...], tuple[str, int]]:
    """``{path: (flow "In"/"Out", width)}`` of every port of ``component``'s signature."""
    out = {}
    for path, member in component.signature.members.flatten():
        if member.is_port:
            out[path] = (member.flow.name, Shape.cast(member.shape).width)
    return out


def _trailing_int(name: str) -> int | None:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else None


def discover_ports(component, config: OverlayConfig) -> KernelPorts:
    """Find the control slave, the HBM masters and the interrupt of an Amaranth top component.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
        The overlay top (or a stand-in with the same signature convention).
    config : OverlayConfig
        The build's configuration; the master count must equal ``config.hbm_ports`` and their data
        and address widths must equal ``config.axi_data_bits`` / ``config.axi_addr_bits``.

    Returns
    -------
    KernelPorts

    Raises
    ------
    ConfigError
        Not exactly one AXI4-Lite slave, a master count or width different from ``config``,
        masters without distinct trailing numbers 0..N-1, or any other top-level member.
    """
    flat = _flat(component)
    groups: dict[str, dict[tuple[str, ...], tuple[str, int]]] = {}
    for path, info in flat.items():
        groups.setdefault(path[0], {})[path[1:]] = info
    control, masters, irq = [], [], None
    fields = {}
    for name, members in groups.items():
        chans = {p[0] for p in members if p}
        if members.keys() == {()}:
            flow, width = members[()]
            if name in ("irq", "interrupt") and flow == "Out" and width == 1:
                irq = name
                continue
            raise ConfigError(f"top-level member {name!r} ({flow}, {width} bits) has no kernel port: "
                              f"expected only an AXI4-Lite slave, AXI4 masters and irq/interrupt")
        for p, (_, width) in members.items():
            fields[(name,) + p] = width
        if chans == {"aw", "w", "b", "ar", "r"} and ("aw", "prot") in members:
            if members[("aw", "valid")][0] != "In":
                raise ConfigError(f"AXI4-Lite member {name!r} is a master; the kernel needs a slave")
            control.append(name)
        elif chans in ({"ar", "r"}, {"aw", "w", "b", "ar", "r"}) and ("ar", "len") in members:
            if members[("ar", "valid")][0] != "Out":
                raise ConfigError(f"AXI4 member {name!r} is a slave; HBM ports must be masters")
            idx = _trailing_int(name)
            if idx is None:
                raise ConfigError(f"AXI4 master {name!r} must end in its HBM port number")
            masters.append(MasterPort(
                overlay_name=name, kernel_name=f"m_axi_hbm{idx:02d}", index=idx,
                data_bits=members[("r", "data")][1], addr_bits=members[("ar", "addr")][1],
                id_bits=members[("ar", "id")][1], writes="aw" in chans))
        else:
            raise ConfigError(f"top-level member {name!r} with channels {sorted(chans)} is neither an "
                              f"AXI4-Lite slave nor an AXI4 master")
    if len(control) != 1:
        raise ConfigError(f"expected exactly one AXI4-Lite slave on the top, found {control}")
    masters.sort(key=lambda m: m.index)
    if [m.index for m in masters] != list(range(config.hbm_ports)):
        raise ConfigError(f"expected AXI4 masters numbered 0..{config.hbm_ports - 1} "
                          f"(hbm_ports={config.hbm_ports}), found {[m.overlay_name for m in masters]}")
    for m in masters:
        if m.data_bits != config.axi_data_bits or m.addr_bits != config.axi_addr_bits:
            raise ConfigError(
                f"master {m.overlay_name}: expected {config.axi_data_bits}-bit data and "
                f"{config.axi_addr_bits}-bit addresses (OverlayConfig), found {m.data_bits} / {m.addr_bits}")
    lite_addr = groups[control[0]][("aw", "addr")][1]
    if lite_addr != csr.CSR_ADDR_BITS:
        raise ConfigError(f"AXI4-Lite slave {control[0]!r}: expected {csr.CSR_ADDR_BITS} address bits "
                          f"(hw/csr.py), found {lite_addr}")
    return KernelPorts(control[0], lite_addr, tuple(masters), irq, fields)


def kernel_port_names(ports: KernelPorts) -> dict[str, list[str]]:
    """Kernel-level interface names: ``{"control": [...], "masters": [...], "clock": ..., ...}``."""
    return {"clock": ["ap_clk"], "reset": ["ap_rst_n"], "interrupt": ["interrupt"],
            "control": [CONTROL_PORT], "masters": [m.kernel_name for m in ports.masters]}


def _decl(direction: str, width: int, name: str) -> str:
    rng = f"[{width - 1}:0] " if width > 1 else ""
    return f"    {direction} wire {rng}{name}"


def wrapper_verilog(ports: KernelPorts) -> str:
    """Verilog of the ``ternopu_kernel`` wrapper around module :data:`OVERLAY_MODULE`.

    Every kernel port is connected straight to its overlay port (no logic) except: the address
    of each master (zero-extended to 64 bits and OR-ed with ``HBM_ADDR_BASE``), the reset
    (two-register pipeline of ``~ap_rst_n``), the AXI4-Lite ``prot`` inputs (tied to 0: Vitis's
    control interface has none) and the write channels of read-only masters (tied off).
    """
    decls = ["    input wire ap_clk", "    input wire ap_rst_n", "    output wire interrupt"]
    conns = [".clk(ap_clk)", ".rst(rst)"]
    body = []
    unused = []  # kernel inputs of tied-off write channels
    c = ports.control
    for chan, fld, suffix, direction in _LITE_FIELDS:
        width = ports.fields[(c, chan, fld)]
        decls.append(_decl(direction, width, f"{CONTROL_PORT}_{suffix}"))
        conns.append(f".{c}__{chan}__{fld}({CONTROL_PORT}_{suffix})")
    conns += [f".{c}__aw__prot(3'b000)", f".{c}__ar__prot(3'b000)"]
    for m in ports.masters:
        k, o = m.kernel_name, m.overlay_name
        fields = _READ_FIELDS + _WRITE_FIELDS
        for chan, fld, direction in fields:
            suffix = f"{chan}{fld}"
            has = (o, chan, fld) in ports.fields
            width = ports.fields.get((o, chan, fld)) or _tied_width(m, fld)
            if fld == "addr":
                decls.append(_decl(direction, VITIS_ADDR_BITS, f"{k}_{suffix}"))
                if has:
                    body.append(f"  wire [{m.addr_bits - 1}:0] {k}_{suffix}_ov;")
                    body.append(f"  assign {k}_{suffix} = HBM_ADDR_BASE | "
                                f"{{{VITIS_ADDR_BITS - m.addr_bits}'d0, {k}_{suffix}_ov}};")
                    conns.append(f".{o}__{chan}__{fld}({k}_{suffix}_ov)")
                else:
                    body.append(f"  assign {k}_{suffix} = {VITIS_ADDR_BITS}'d0;")
                continue
            decls.append(_decl(direction, width, f"{k}_{suffix}"))
            if has:
                conns.append(f".{o}__{chan}__{fld}({k}_{suffix})")
            elif direction == "output":  # tie off the write channels of a read-only master
                value = "1'b1" if (chan, fld) == ("b", "ready") else f"{width}'d0"
                body.append(f"  assign {k}_{suffix} = {value};")
            else:
                unused.append(f"{k}_{suffix}")
    if ports.irq:
        conns.append(f".{ports.irq}(interrupt)")
    else:
        body.append("  assign interrupt = 1'b0;")
    lines = [
        "// Generated by ternopu.fpga_builds.kernel -- do not edit.",
        f"// Vitis RTL kernel wrapper: Vitis port names -> Amaranth overlay ({OVERLAY_MODULE}).",
        "`default_nettype none",
        f"module {KERNEL_NAME} #(",
        f"    // OR-ed into every HBM address (the overlay addresses {ports.masters[0].addr_bits} bits).",
        f"    parameter [{VITIS_ADDR_BITS - 1}:0] HBM_ADDR_BASE = {VITIS_ADDR_BITS}'d0",
        ") (",
        ",\n".join(decls),
        ");",
        "  // Synchronous active-high reset for the overlay: ~ap_rst_n through two registers.",
        "  reg [1:0] rst_pipe = 2'b11;",
        "  always @(posedge ap_clk) rst_pipe <= {rst_pipe[0], ~ap_rst_n};",
        "  wire rst = rst_pipe[1];",
        *body,
    ]
    if unused:
        # Inputs of tied-off write channels: read nowhere, by design.
        lines.append("  /* verilator lint_off UNUSEDSIGNAL */")
        lines.append(f"  wire tied_off_inputs_unused = ^{{1'b0{''.join(', ' + u for u in unused)}}};")
        lines.append("  /* verilator lint_on UNUSEDSIGNAL */")
    lines += [
        f"  {OVERLAY_MODULE} u_overlay (",
        ",\n".join("    " + c for c in conns),
        "  );",
        "endmodule",
        "`default_nettype wire",
        "",
    ]
    return "\n".join(lines)


def _tied_width(m: MasterPort, fld: str) -> int:
    """Width of a field a read-only master lacks (write channels of a Vitis m_axi port)."""
    return {"valid": 1, "ready": 1, "last": 1, "id": m.id_bits, "len": 8, "size": 3, "burst": 2,
            "resp": 2, "data": m.data_bits, "strb": m.data_bits // 8,
            "addr": m.addr_bits}[fld]


def kernel_xml(ports: KernelPorts) -> str:
    """kernel.xml of the RTL kernel (user-managed control, see the module docstring)."""
    root = ET.Element("root", versionMajor="1", versionMinor="6")
    k = ET.SubElement(root, "kernel", name=KERNEL_NAME, language="ip_c",
                      vlnv=f"{IP_VENDOR}:{IP_LIBRARY}:{KERNEL_NAME}:{IP_VERSION}", attributes="",
                      preferredWorkGroupSizeMultiple="0", workGroupSize="1",
                      interrupt="true" if ports.irq else "false",
                      hwControlProtocol="user_managed")
    xml_ports = ET.SubElement(k, "ports")
    ET.SubElement(xml_ports, "port", name=CONTROL_PORT, mode="slave",
                  range=f"0x{1 << ports.control_addr_bits:X}", dataWidth="32",
                  portType="addressable", base="0x0")
    for m in ports.masters:
        ET.SubElement(xml_ports, "port", name=m.kernel_name, mode="master",
                      range="0xFFFFFFFFFFFFFFFF", dataWidth=str(m.data_bits),
                      portType="addressable", base="0x0")
    args = ET.SubElement(k, "args")
    arg_id = 0
    for name, reg, size in SCALAR_ARGS:
        ET.SubElement(args, "arg", name=name, addressQualifier="0", id=str(arg_id), port=CONTROL_PORT,
                      size=f"0x{size:X}", offset=f"0x{csr.REGISTER_BY_NAME[reg].offset:03X}",
                      type="ulong" if size == 8 else "uint", hostOffset="0x0", hostSize=f"0x{size:X}")
        arg_id += 1
    for m in ports.masters:
        ET.SubElement(args, "arg", name=f"hbm{m.index:02d}", addressQualifier="1", id=str(arg_id),
                      port=m.kernel_name, size="0x8", offset=f"0x{pointer_arg_offset(m.index):03X}",
                      type="void*", hostOffset="0x0", hostSize="0x8")
        arg_id += 1
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def pointer_arg_offset(index: int) -> int:
    """s_axi_control offset of the pointer arg of HBM port ``index``."""
    off = POINTER_ARG_BASE + 8 * index
    if off + 8 > 1 << csr.CSR_ADDR_BITS:
        raise ConfigError(f"pointer arg of port {index} at {off:#x} is outside the CSR window")
    return off


_MEM_DECL = re.compile(r"^(\s*)reg\s+(?:\[(\d+):(\d+)\]\s+)?(\\?\S+)\s*\[(\d+):(\d+)\]\s*;", re.M)


def annotate_uram(verilog: str, min_bits: int = URAM_MIN_BITS,
                  min_depth: int = URAM_MIN_DEPTH) -> tuple[str, list[dict]]:
    """Put ``(* ram_style = "ultra" *)`` on every Verilog memory of at least ``min_bits`` bits
    and ``min_depth`` words.

    Returns the new text and one ``{"name", "width", "depth", "bits"}`` per annotated memory.
    Memories declared with an attribute already are left as they are.
    """
    found = []

    def repl(m: re.Match) -> str:
        width = int(m.group(2)) - int(m.group(3)) + 1 if m.group(2) else 1
        depth = abs(int(m.group(5)) - int(m.group(6))) + 1
        if width * depth < min_bits or depth < min_depth:
            return m.group(0)
        found.append({"name": m.group(4), "width": width, "depth": depth, "bits": width * depth})
        return f'{m.group(1)}(* ram_style = "ultra" *)\n{m.group(0).lstrip(chr(10))}'

    return _MEM_DECL.sub(repl, verilog), found


def overlay_verilog(component) -> str:
    """Verilog of the Amaranth top ``component`` with module name :data:`OVERLAY_MODULE`."""
    from ternopu.sim.runner import verilog_of

    return verilog_of(component, OVERLAY_MODULE)


@dataclass(frozen=True)
class KernelFiles:
    """Paths of the generated kernel sources."""

    overlay: Path
    wrapper: Path
    kernel_xml: Path
    ports_json: Path
    ports: KernelPorts
    uram_memories: tuple = ()


def generate_kernel(config: OverlayConfig, component, out_dir: Path, *,
                    verilog: str | None = None) -> KernelFiles:
    """Write the overlay Verilog, the wrapper, kernel.xml and ports.json into ``out_dir``.

    Parameters
    ----------
    config : OverlayConfig
    component : amaranth.lib.wiring.Component
        The overlay top (its signature is checked by :func:`discover_ports`).
    out_dir : Path
        Created if missing.
    verilog : str, optional
        Already generated Verilog of ``component`` with module name :data:`OVERLAY_MODULE`
        (saves a second elaboration).
    """
    ports = discover_ports(component, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = verilog if verilog is not None else overlay_verilog(component)
    if f"module {OVERLAY_MODULE}(" not in text and f"module {OVERLAY_MODULE} (" not in text:
        raise ConfigError(f"overlay Verilog must define module {OVERLAY_MODULE}")
    text, urams = annotate_uram(mark_alias_wires(text))
    files = KernelFiles(out_dir / f"{OVERLAY_MODULE}.v", out_dir / f"{KERNEL_NAME}.v",
                        out_dir / "kernel.xml", out_dir / "ports.json", ports, tuple(urams))
    files.overlay.write_text(text)
    files.wrapper.write_text(wrapper_verilog(ports))
    files.kernel_xml.write_text(kernel_xml(ports))
    files.ports_json.write_text(json.dumps({
        "kernel": KERNEL_NAME, "instance": INSTANCE_NAME, "overlay_module": OVERLAY_MODULE,
        "board": config.board, "clock_hz": config.clock_hz,
        "control": {"overlay": ports.control, "kernel": CONTROL_PORT,
                    "addr_bits": ports.control_addr_bits},
        "interrupt": ports.irq,
        "masters": [asdict(m) for m in ports.masters],
        "uram_memories": urams,
    }, indent=1))
    return files
