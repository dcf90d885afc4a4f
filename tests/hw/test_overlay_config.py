"""OverlayConfig validation and derived figures."""

import pytest

from ternopu.golden.errors import ConfigError
from ternopu.hw.overlay_config import BOARDS, U280_DEFAULT, V80_DEFAULT, OverlayConfig


def test_defaults_match_the_boards():
    assert U280_DEFAULT.hbm_ports == BOARDS["u280"].hbm_pseudo_channels == 32
    # 460 GB/s over 32 channels at 300 MHz.
    assert U280_DEFAULT.peak_bytes_per_cycle == pytest.approx(460e9 / 300e6)
    assert V80_DEFAULT.board_info.dsp == "dsp58"
    assert U280_DEFAULT.port_names[0] == "m_axi_hbm00" and U280_DEFAULT.port_names[-1] == "m_axi_hbm31"


@pytest.mark.parametrize("kw, match", [
    ({"board": "zcu104"}, "board"),
    ({"hbm_ports": 0}, "hbm_ports"),
    ({"hbm_ports": 33}, "hbm_ports"),
    ({"axi_data_bits": 100}, "axi_data_bits"),
    ({"axi_addr_bits": 20}, "axi_addr_bits"),
    ({"clock_hz": 5e9}, "clock_hz"),
])
def test_bad_configs_are_rejected(kw, match):
    with pytest.raises(ConfigError, match=match):
        OverlayConfig(**kw)


def test_fewer_ports_scale_the_peak():
    assert OverlayConfig(hbm_ports=8).peak_bytes_per_cycle == pytest.approx(U280_DEFAULT.peak_bytes_per_cycle / 4)
