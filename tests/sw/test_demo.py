"""``make demo``'s script: the golden part runs and passes its checks; bad arguments are refused.

The overlay part (Verilator) is the end-to-end test tests/sim/test_e2e_overlay.py on the same model,
engines and overlay (``ternopu.sw.demo.overlay_model`` / ``OVERLAY_ENGINES`` / ``OVERLAY_PORTS``).
"""

from __future__ import annotations

import pytest

from ternopu.sw import demo


def test_golden_part_passes(capsys):
    assert demo.main(["--golden-only"]) == 0
    out = capsys.readouterr().out
    assert "Golden model vs float reference" in out and "FAIL" not in out


def test_bad_token_count_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        demo.main(["--tokens", "0"])
    assert e.value.code == 2


def test_overlay_image_comes_from_a_checkpoint(tmp_path):
    image, cfg, weights = demo.overlay_image(tmp_path)
    assert cfg.routers and cfg.kv_bits == 16 and cfg.hidden == demo.overlay_model().hidden
    assert image.plan.geo.ports == demo.OVERLAY_PORTS
    assert "model.layers.0.router.attn.weight" in weights or any("router" in k for k in weights)
