"""Consistency of the generated FPGA build flows (U280 Vitis kernel, V80 Vivado/NoC) with the config.

The overlay top used here is a stand-in with the overlay's port convention (tests/fpga/standin_top.py):
the flow only depends on that convention. The TCL is executed in a Tcl interpreter in which every
vendor command is a recording stub (unknown commands other than the vendor ones are errors), so
Tcl syntax, quoting and control flow are checked, and the recorded calls are checked against the
configuration; what Vivado would do with them is not (the tools are not installable here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tkinter
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from standin_top import StandInTop  # noqa: E402

from ternopu.fpga_builds import bitstream, kernel as K  # noqa: E402
from ternopu.fpga_builds.aliases import LINT_OFF, mark_alias_wires  # noqa: E402
from ternopu.fpga_builds.lint import lint_verilog  # noqa: E402
from ternopu.fpga_builds.u280 import flow as u280_flow  # noqa: E402
from ternopu.fpga_builds.units import UNITS  # noqa: E402
from ternopu.fpga_builds.versal import flow as versal_flow  # noqa: E402
from ternopu.golden.errors import ConfigError  # noqa: E402
from ternopu.hw import csr  # noqa: E402
from ternopu.hw.overlay_config import BOARDS, U280_DEFAULT, V80_DEFAULT, OverlayConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# Vendor commands the generated TCL may call (Vivado / IP packager / IP integrator).
VENDOR_COMMANDS = {
    "create_project", "add_files", "set_property", "update_compile_order", "current_fileset",
    "ipx::package_project", "ipx::unload_core", "ipx::edit_ip_in_project", "ipx::current_core",
    "ipx::associate_bus_interfaces", "ipx::get_bus_parameters", "ipx::get_bus_interfaces",
    "ipx::remove_bus_parameter", "ipx::infer_bus_interface", "ipx::add_memory_map",
    "ipx::add_address_block", "ipx::add_register", "ipx::add_register_parameter",
    "ipx::create_xgui_files", "ipx::update_checksums", "ipx::check_integrity", "ipx::save_core",
    "close_project", "package_xo", "create_bd_design", "create_bd_cell", "get_bd_cells",
    "get_bd_intf_pins", "get_bd_pins", "get_bd_ports", "connect_bd_intf_net", "connect_bd_net",
    "create_bd_port", "make_bd_intf_pins_external", "make_bd_pins_external", "assign_bd_address",
    "get_bd_addr_segs", "get_bd_addr_spaces", "get_property", "validate_bd_design",
    "save_bd_design", "make_wrapper", "get_files", "launch_runs", "wait_on_run", "open_run",
    "report_utilization", "report_timing_summary",
}


def run_tcl(path: Path, extra: str = "") -> list[list[str]]:
    """Execute ``path`` with recording stubs for the vendor commands; return the calls.

    A ``get_*`` query returns its last argument (the object's name), so object references show up
    by name in the recorded calls that use them.
    """
    tcl = tkinter.Tcl()
    tcl.eval("set ::calls {}")
    tcl.eval("proc unknown {args} {\n"
             "  if {[lsearch -exact $::vendor [lindex $args 0]] < 0} {\n"
             "    error \"not a vendor command: [lindex $args 0]\" }\n"
             "  lappend ::calls $args\n"
             "  if {[string match get_* [lindex $args 0]]} { return [lindex $args end] }\n"
             "  return {} }")
    tcl.eval("set ::vendor {" + " ".join(sorted(VENDOR_COMMANDS)) + "}")
    tcl.eval("rename file _file; proc file {op args} {"
             " if {$op eq {delete}} { return } ; return [_file $op {*}$args] }")  # never delete
    tcl.eval(path.read_text())
    if extra:
        tcl.eval(extra)
    n = int(tcl.eval("llength $::calls"))
    return [list(tcl.splitlist(tcl.eval(f"lindex $::calls {i}"))) for i in range(n)]


def wrapper_ports(verilog: str) -> dict[str, tuple[str, int]]:
    """``{name: (direction, width)}`` of the wrapper's port declarations."""
    out = {}
    for m in re.finditer(r"^\s*(input|output) wire (?:\[(\d+):0\] )?(\w+)", verilog, re.M):
        out[m.group(3)] = (m.group(1), int(m.group(2)) + 1 if m.group(2) else 1)
    return out


@pytest.fixture(scope="module")
def u280_build(tmp_path_factory):
    """The default U280 configuration (32 HBM ports, 300 MHz) generated with the stand-in top."""
    out = tmp_path_factory.mktemp("u280")
    manifest = bitstream.generate(U280_DEFAULT, StandInTop(U280_DEFAULT), out)
    return out, manifest


@pytest.fixture(scope="module")
def v80_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("v80")
    manifest = bitstream.generate(V80_DEFAULT, StandInTop(V80_DEFAULT), out)
    return out, manifest


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    """4 ports, port 3 read-only (tie-offs in the wrapper), 250 MHz."""
    cfg = OverlayConfig(hbm_ports=4, clock_hz=250e6)
    out = tmp_path_factory.mktemp("small")
    manifest = bitstream.generate(cfg, StandInTop(cfg, read_only=(3,)), out)
    return cfg, out, manifest


def sp_lines(cfg_text: str) -> list[tuple[str, str, int]]:
    return [(m.group(1), m.group(2), int(m.group(3)))
            for m in re.finditer(r"^sp=(\w+)\.(\w+):HBM\[(\d+)\]$", cfg_text, re.M)]


# ---- U280 -----------------------------------------------------------------------------------


def test_u280_every_port_on_a_distinct_pseudo_channel_exactly_once(u280_build):
    out, _ = u280_build
    text = (out / "connectivity.cfg").read_text()
    sps = sp_lines(text)
    assert f"nk={K.KERNEL_NAME}:1:{K.INSTANCE_NAME}" in text.splitlines()
    ports = [p for _, p, _ in sps]
    channels = [c for _, _, c in sps]
    assert {cu for cu, _, _ in sps} == {K.INSTANCE_NAME}
    assert sorted(ports) == [f"m_axi_hbm{i:02d}" for i in range(U280_DEFAULT.hbm_ports)]
    assert len(set(ports)) == len(ports) == U280_DEFAULT.hbm_ports  # each port exactly once
    assert len(set(channels)) == len(channels)  # distinct pseudo-channels
    assert all(0 <= c < BOARDS["u280"].hbm_pseudo_channels for c in channels)
    assert all(int(p[-2:]) == c for _, p, c in sps)  # port NN -> HBM[NN]
    # no line of the [connectivity] section other than nk/sp
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert body[0] == "[connectivity]" and len(body) == 2 + U280_DEFAULT.hbm_ports


def test_u280_names_agree_across_wrapper_kernel_xml_connectivity_and_tcl(u280_build):
    out, _ = u280_build
    wrapper = wrapper_ports((out / "src" / "ternopu_kernel.v").read_text())
    xml = ET.parse(out / "src" / "kernel.xml").getroot().find("kernel")
    assert xml.get("name") == K.KERNEL_NAME
    xml_ports = {p.get("name"): p for p in xml.find("ports")}
    masters = [n for n, p in xml_ports.items() if p.get("mode") == "master"]
    wrapper_masters = sorted({n[: len("m_axi_hbm00")] for n in wrapper if n.startswith("m_axi_hbm")})
    sp_ports = sorted(p for _, p, _ in sp_lines((out / "connectivity.cfg").read_text()))
    assert sorted(masters) == wrapper_masters == sp_ports
    assert [n for n, p in xml_ports.items() if p.get("mode") == "slave"] == [K.CONTROL_PORT]
    assert {"ap_clk", "ap_rst_n", "interrupt"} <= wrapper.keys()
    # every master is a full Vitis m_axi port with 64-bit addresses and the configured data width
    for m in masters:
        assert wrapper[f"{m}_araddr"] == ("output", 64) and wrapper[f"{m}_awaddr"] == ("output", 64)
        assert wrapper[f"{m}_rdata"] == ("input", U280_DEFAULT.axi_data_bits)
        assert wrapper[f"{m}_wdata"] == ("output", U280_DEFAULT.axi_data_bits)
        assert xml_ports[m].get("dataWidth") == str(U280_DEFAULT.axi_data_bits)
        for sfx in ("arvalid", "arready", "arlen", "arsize", "arburst", "rvalid", "rready", "rlast",
                    "rresp", "awvalid", "awready", "wvalid", "wready", "wstrb", "wlast", "bvalid",
                    "bready", "bresp"):
            assert f"{m}_{sfx}" in wrapper, f"{m}_{sfx}"
    assert wrapper["s_axi_control_awaddr"] == ("input", csr.CSR_ADDR_BITS)
    assert wrapper["s_axi_control_rdata"] == ("output", 32)
    assert xml_ports[K.CONTROL_PORT].get("range") == f"0x{1 << csr.CSR_ADDR_BITS:X}"
    # kernel args: one pointer per master, on its own port, at distinct offsets no CSR decodes
    args = list(xml.find("args"))
    ptr = {a.get("port"): int(a.get("offset"), 16) for a in args if a.get("addressQualifier") == "1"}
    assert sorted(ptr) == sorted(masters)
    csr_offsets = {r.offset for r in csr.REGISTER_MAP}
    assert len(set(ptr.values())) == len(ptr) and not set(ptr.values()) & csr_offsets
    scalars = {a.get("name"): int(a.get("offset"), 16) for a in args if a.get("addressQualifier") == "0"}
    assert scalars == {"prog_base": csr.REGISTER_BY_NAME["PROG_BASE_LO"].offset,
                       "prog_len": csr.REGISTER_BY_NAME["PROG_LEN"].offset}
    assert [int(a.get("id")) for a in args] == list(range(len(args)))


def test_u280_package_tcl_associates_every_interface_and_packages_the_kernel(u280_build):
    out, _ = u280_build
    calls = run_tcl(out / "package_kernel.tcl")
    create = next(c for c in calls if c[0] == "create_project")
    assert create[-2:] == ["-part", BOARDS["u280"].part]
    assoc = {c[c.index("-busif") + 1] for c in calls
             if c[0] == "ipx::associate_bus_interfaces" and "-busif" in c and c[c.index("-clock") + 1] == "ap_clk"}
    assert assoc == {K.CONTROL_PORT} | {f"m_axi_hbm{i:02d}" for i in range(U280_DEFAULT.hbm_ports)}
    assert ["ipx::associate_bus_interfaces", "-clock", "ap_clk", "-reset", "ap_rst_n", ""] in calls
    regs = [c[2] for c in calls if c[:2] == ["ipx::add_register", "-quiet"]]
    assert regs == ["prog_base", "prog_len"] + [f"hbm{i:02d}" for i in range(U280_DEFAULT.hbm_ports)]
    xo = next(c for c in calls if c[0] == "package_xo")
    assert xo[xo.index("-kernel_name") + 1] == K.KERNEL_NAME
    assert xo[xo.index("-kernel_xml") + 1].endswith("src/kernel.xml")
    assert any(c[:2] == ["set_property", "sdx_kernel"] and c[2] == "true" for c in calls)


def test_u280_link_cfg_platform_and_clock(u280_build, small_build):
    out, manifest = u280_build
    text = (out / "link.cfg").read_text()
    assert f"platform={BOARDS['u280'].platform}" in text.splitlines()
    assert "kernel_frequency=0:300" in text.splitlines()
    assert manifest["platform"] == BOARDS["u280"].platform and manifest["part"] == BOARDS["u280"].part
    _, small, _ = small_build
    assert "kernel_frequency=0:250" in (small / "link.cfg").read_text().splitlines()
    assert len(sp_lines((small / "connectivity.cfg").read_text())) == 4
    build = (out / "build.sh").read_text()
    assert "v++ -l -t hw --config link.cfg --config connectivity.cfg ternopu_kernel.xo" in build
    assert "-source package_kernel.tcl" in build and os.access(out / "build.sh", os.X_OK)
    with pytest.raises(ConfigError, match="whole MHz"):
        u280_flow.link_cfg(OverlayConfig(clock_hz=312.5e6), "p")


def test_platform_override(tmp_path):
    cfg = OverlayConfig(hbm_ports=2)
    bitstream.generate(cfg, StandInTop(cfg), tmp_path, platform="xilinx_u280_gen3x16_xdma_base_1")
    assert "platform=xilinx_u280_gen3x16_xdma_base_1" in (tmp_path / "link.cfg").read_text()


# ---- wrapper / Verilog --------------------------------------------------------------------


def test_wrapper_lints_clean_with_the_project_lint(small_build):
    cfg, out, _ = small_build
    text = (out / "src" / "ternopu_overlay.v").read_text() + (out / "src" / "ternopu_kernel.v").read_text()
    r = lint_verilog(text, K.KERNEL_NAME)
    assert r["clean"], "\n".join(r["messages"])


def test_wrapper_ties_off_read_only_port(small_build):
    _, out, manifest = small_build
    v = (out / "src" / "ternopu_kernel.v").read_text()
    assert "assign m_axi_hbm03_awvalid = 1'd0;" in v and "assign m_axi_hbm03_wvalid = 1'd0;" in v
    assert "assign m_axi_hbm03_bready = 1'b1;" in v
    assert "m_axi_hbm02_awvalid = " not in v  # a full master is connected, not tied
    assert ".hbm2__aw__valid(m_axi_hbm02_awvalid)" in v
    masters = {m["kernel_name"]: m["writes"] for m in
               json.loads((out / "src" / "ports.json").read_text())["masters"]}
    assert masters == {"m_axi_hbm00": True, "m_axi_hbm01": True, "m_axi_hbm02": True, "m_axi_hbm03": False}


def _unused_ok(component):
    """Silence Amaranth's never-elaborated warning for a component only inspected."""
    component._MustUse__silence = True
    return component


def test_discover_ports_rejects_tops_that_do_not_match_the_config():
    top = _unused_ok(StandInTop(OverlayConfig(hbm_ports=4)))
    with pytest.raises(ConfigError, match=r"expected AXI4 masters numbered 0\.\.4"):
        K.discover_ports(top, OverlayConfig(hbm_ports=5))
    with pytest.raises(ConfigError, match="expected 128-bit data"):
        K.discover_ports(top, OverlayConfig(hbm_ports=4, axi_data_bits=128))

    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from ternopu.hw.axi import AXI4Signature

    class NoControl(wiring.Component):
        def __init__(self):
            super().__init__({"hbm0": Out(AXI4Signature())})

    with pytest.raises(ConfigError, match="exactly one AXI4-Lite slave"):
        K.discover_ports(_unused_ok(NoControl()), OverlayConfig(hbm_ports=1))

    class Extra(wiring.Component):
        def __init__(self):
            super().__init__({"hbm0": Out(AXI4Signature()), "debug": Out(8)})

    with pytest.raises(ConfigError, match="'debug'.*has no kernel port"):
        K.discover_ports(_unused_ok(Extra()), OverlayConfig(hbm_ports=1))

    class SlaveHbm(wiring.Component):
        def __init__(self):
            super().__init__({"hbm0": In(AXI4Signature())})

    with pytest.raises(ConfigError, match="is a slave"):
        K.discover_ports(_unused_ok(SlaveHbm()), OverlayConfig(hbm_ports=1))


def test_annotate_uram_marks_only_big_memories():
    v = ("module m;\n  reg [71:0] big [4095:0];\n  reg [7:0] small [255:0];\n"
         "  reg [35:0] edge_ [2047:0];\n  reg [455:0] wide [287:0];\n  reg [7:0] deep [4095:0];\n"
         "endmodule\n")
    out, found = K.annotate_uram(v)
    # 36 x 2048 = URAM_MIN_BITS at URAM_MIN_DEPTH counts; shallow-wide and deep-small do not
    assert [f["name"] for f in found] == ["big", "edge_"]
    assert '(* ram_style = "ultra" *)\n  reg [71:0] big [4095:0];' in out
    assert '(* ram_style = "ultra" *)\n  reg [7:0] small' not in out


def test_alias_marking_keeps_real_findings():
    v = ("module t(input wire [3:0] a, output wire [3:0] y);\n"
         "  wire [3:0] alias_of_a;\n  wire [3:0] computed;\n  wire [1:0] part;\n"
         "  assign alias_of_a = a;\n  assign part = a[2:1];\n  assign computed = a + 4'd1;\n"
         "  assign y = a;\nendmodule\n")
    marked = mark_alias_wires(v)
    assert marked.count(LINT_OFF) == 2  # alias_of_a and part, not computed
    r = lint_verilog(marked, "t")
    assert not r["clean"] and r["by_rule"] == {"UNUSEDSIGNAL": 1, "ERROR": 1}
    assert "'computed'" in r["messages"][0]


# ---- V80 ----------------------------------------------------------------------------------


def test_v80_every_port_on_its_own_noc_hbm_port(v80_build):
    out, manifest = v80_build
    calls = run_tcl(out / "create_project.tcl")
    assert next(c for c in calls if c[0] == "create_project")[-2:] == ["-part", BOARDS["v80"].part]
    n = V80_DEFAULT.hbm_ports
    conns = {}
    for c in calls:
        if c[:1] == ["set_property"] and "CONFIG.CONNECTIONS" in c[2]:
            d = tkinter.Tcl().splitlist(c[2])
            target = tkinter.Tcl().splitlist(d[d.index("CONFIG.CONNECTIONS") + 1])[0]
            assert d[d.index("CONFIG.CATEGORY") + 1] == "pl_hbm"
            assert d[d.index("CONFIG.DATA_WIDTH") + 1] == str(V80_DEFAULT.axi_data_bits)
            nmu = c[3].split("/")[-1]
            conns[nmu] = target
    assert len(conns) == n and len(set(conns.values())) == n  # distinct NoC HBM ports
    expected_targets = {versal_flow.noc_nmu_name(i): f"HBM{i // 2}_PORT{2 * (i % 2)}" for i in range(n)}
    assert conns == expected_targets
    # pseudo-channel of each target: channel c has pseudo-channels 2c (ports 0-1), 2c+1 (ports 2-3)
    pcs = {2 * int(t[3:t.index("_")]) + int(t[-1]) // 2 for t in conns.values()}
    assert pcs == set(range(n))
    links = [c for c in calls if c[0] == "connect_bd_intf_net"]
    assert len(links) == n
    assert {c[1].split("/")[-1] for c in links} == {f"m_axi_hbm{i:02d}" for i in range(n)}
    assert ["create_bd_port", "-dir", "I", "-type", "clk", "-freq_hz", "300000000", "ap_clk"] in calls
    xdc = (out / "ternopu_v80.xdc").read_text()
    assert "create_clock -period 3.333 -name ap_clk [get_ports ap_clk]" in xdc
    assert manifest["part"] == BOARDS["v80"].part and manifest["platform"] is None


def test_v80_aved_procedure_wires_the_same_connectivity(v80_build):
    out, _ = v80_build
    calls = run_tcl(out / "aved_user.tcl", "ternopu::add_to_bd hbm_noc user_clk user_rstn mgmt/M_AXI")
    assert sum(c[0] == "connect_bd_intf_net" for c in calls) == V80_DEFAULT.hbm_ports + 1
    assert ["create_bd_cell", "-type", "module", "-reference", K.KERNEL_NAME, "ternopu_0"] in calls


def test_noc_port_mapping_rejects_bad_ports():
    with pytest.raises(ConfigError, match=r"port must be in \[0, 4\)"):
        versal_flow.noc_hbm_port(OverlayConfig(board="v80", hbm_ports=4), 4)
    with pytest.raises(ConfigError, match="needs a Versal board"):
        versal_flow.write_flow(U280_DEFAULT, None, Path("."))
    with pytest.raises(ConfigError, match="needs board='u280'"):
        u280_flow.write_flow(V80_DEFAULT, None, Path("."), "p")


# ---- bitstream command ----------------------------------------------------------------------


def _env_without_tools(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XILINX_")}
    empty = tmp_path / "empty_bin"
    empty.mkdir(exist_ok=True)
    env["PATH"] = str(empty)  # nothing on PATH: no vivado, no v++
    return env


def test_bitstream_fails_fast_without_tools(tmp_path):
    """The real command, tools hidden by PATH: exits before elaborating anything."""
    env = _env_without_tools(tmp_path)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ternopu.fpga_builds.bitstream", "--board", "u280",
                           "--out", str(tmp_path / "out")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == bitstream.EXIT_NO_TOOLS, proc.stderr
    assert "vivado, v++ not found on PATH" in proc.stderr
    assert f"Install AMD Vitis + Vivado {u280_flow.VITIS_MIN_VERSION} or later" in proc.stderr
    assert BOARDS["u280"].platform in proc.stderr and "--generate-only" in proc.stderr
    assert str(tmp_path / "out") in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing elaborated, generated or run
    assert elapsed < 60  # interpreter start and imports only


def test_bitstream_v80_fails_fast_without_vivado(tmp_path, monkeypatch, capsys):
    for k in [k for k in os.environ if k.startswith("XILINX_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PATH", str(tmp_path))
    # the top is never loaded: a missing module would otherwise give EXIT_NO_TOP
    rc = bitstream.main(["--board", "v80", "--out", str(tmp_path / "out"),
                         "--top", "ternopu.hw.no_such_module:Overlay"])
    err = capsys.readouterr().err
    assert rc == bitstream.EXIT_NO_TOOLS
    assert "vivado not found" in err and f"Vivado {versal_flow.VIVADO_MIN_VERSION} or later" in err
    assert BOARDS["v80"].part in err and "AVED" in err
    assert not (tmp_path / "out").exists()


def test_bitstream_runs_the_vendor_tools_when_present(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("vivado", "v++"):
        p = fake / tool
        p.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setattr(sys, "path", [str(Path(__file__).parent)] + sys.path)
    rc = bitstream.main(["--board", "u280", "--out", str(tmp_path / "out"), "--hbm-ports", "2",
                         "--top", "standin_top:StandInTop"])
    assert rc == 0
    calls = log.read_text().splitlines()
    assert calls[0].startswith("vivado -mode batch") and "-source package_kernel.tcl" in calls[0]
    assert calls[1].startswith("v++ -l -t hw --config link.cfg --config connectivity.cfg")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["vendor_tools_run"] and manifest["vendor_exit_status"] == 0


def test_find_tool_uses_install_root(tmp_path):
    root = tmp_path / "Vivado"
    (root / "bin").mkdir(parents=True)
    exe = root / "bin" / "vivado"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    env = {"PATH": str(tmp_path / "nothing"), "XILINX_VIVADO": str(root)}
    assert bitstream.find_tool("vivado", "XILINX_VIVADO", env) == str(exe)
    assert bitstream.missing_tools("v80", env) == []
    assert bitstream.missing_tools("u280", env) == ["v++"]


def test_bitstream_reports_a_missing_top(tmp_path, monkeypatch, capsys):
    rc = bitstream.main(["--board", "v80", "--generate-only", "--out", str(tmp_path),
                         "--top", "ternopu.hw.no_such_module:Overlay"])
    assert rc == bitstream.EXIT_NO_TOP
    assert "cannot load the overlay top" in capsys.readouterr().err


# ---- unit registry ------------------------------------------------------------------------


def test_unit_registry_default_set_and_named_units():
    assert {"isa_decoder", "csr", "controller", "dma_port", "overlay_ci", "tlmm_ci"} <= set(UNITS)
    assert "tlmm_full" in UNITS and "tlmm_full" not in list(UNITS) and "tlmm_ci" in UNITS
    assert UNITS["tlmm_full"].note and not UNITS["tlmm_full"].ci and UNITS["tlmm_full"].full
    assert len(UNITS) == len(list(UNITS.values())) == sum(u.ci for u in map(UNITS.__getitem__, UNITS.all_names()))


@pytest.mark.slow
def test_integrated_overlay_generates_for_every_port(tmp_path):
    """The flow on the integrated overlay (all real units) at the U280's 32 ports, small engines:
    converting the default engines (TLMM 19 x 128, PE 16 x 128) takes far longer than a test
    should; ``make fpga-sources`` does that."""
    overlay = pytest.importorskip("ternopu.hw.overlay")
    top = bitstream.load_top("ternopu.fpga_builds.units:make_overlay_small_engines", U280_DEFAULT)
    assert isinstance(top, overlay.Overlay) and top.config.hbm_ports == 32
    manifest = bitstream.generate(U280_DEFAULT, top, tmp_path)
    assert len(sp_lines((tmp_path / "connectivity.cfg").read_text())) == U280_DEFAULT.hbm_ports
    assert manifest["kernel"] == K.KERNEL_NAME
