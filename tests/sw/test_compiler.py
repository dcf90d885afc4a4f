"""Compiler: memory plan (what fits), image bytes in the unit formats, image files, programs."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ternopu.golden.config import BITNET_2B4T, BITNET_TINY, LLAMA2_7B
from ternopu.golden.int4 import pack_gptq
from ternopu.golden.model import GoldenModel, to_fp16_sat
from ternopu.golden.tlmm import pack_keys
from ternopu.hw import isa
from ternopu.hw.dma import stripe_layout, stripe_split
from ternopu.hw.overlay_config import OverlayConfig
from ternopu.sw.compiler import CompileError, ImageError, build_image, max_context, plan_memory, read_image, write_image
from ternopu.sw.compiler.layout import KV_DESC_BYTES, KVLayout
from ternopu.sw.compiler.program import ALL_QUEUES, step_program, tokens_program

sys.path.insert(0, str(Path(__file__).parent))
from test_golden_iss import small_cfg, weights_for  # noqa: E402


# ---------------------------------------------------------------------------------------------
# memory plan
# ---------------------------------------------------------------------------------------------
def test_reference_models_fit_the_u280_at_4096_tokens():
    for cfg in (BITNET_2B4T, LLAMA2_7B):
        plan = plan_memory(cfg, context=4096)
        assert max(plan.top) <= plan.geo.channel_bytes == 256 << 20
        cats = plan.summary()["categories"]
        assert cats["weights"] > cats["norm"]
    # Llama-2-7B INT4: linears ~3.1 GiB (4-bit codes + fp16 scales + 4-bit zeros per 128); FP16 KV costs 512 KiB per token (32 layers x 2 x 4096 x 2 B)
    plan = plan_memory(LLAMA2_7B, context=4096)
    assert 3.0 * 2**30 < plan.summary()["categories"]["weights"] < 3.3 * 2**30
    assert plan.summary()["categories"]["kv"] == pytest.approx(4096 * 32 * 2 * 4096 * 2, rel=0.01)


def test_longest_context_that_fits():
    """The measured limits reported in docs/compiler.md."""
    assert max_context(LLAMA2_7B.replace(max_pos=32768)) == 8768
    assert max_context(LLAMA2_7B.replace(max_pos=65536, kv_bits=2, kv_group=32, kv_residual=128)) == 45536
    assert max_context(BITNET_2B4T.replace(max_pos=131071)) == 86944


def test_overflow_names_what_does_not_fit():
    with pytest.raises(CompileError, match=r"Llama-2-7B with a 32768-token context \(16-bit KV\) does not fit "
                                           r"the u280 HBM: .*largest parts: kv .*longest context that fits is 8768"):
        plan_memory(LLAMA2_7B.replace(max_pos=32768), context=32768)
    with pytest.raises(CompileError, match="weights alone exceed"):
        plan_memory(LLAMA2_7B, OverlayConfig(hbm_ports=4), context=16)


def test_unsupported_shapes_and_contexts():
    with pytest.raises(CompileError, match="head_dim must be a multiple of 32"):
        plan_memory(BITNET_TINY.replace(heads=8, head_dim=48, hidden=384), context=8)
    with pytest.raises(CompileError, match=r"context must be in \[1, max_pos=256\]"):
        plan_memory(BITNET_TINY, context=257)
    cfg = small_cfg("llama", 16)
    w = weights_for(cfg)
    w["model.layers.0.self_attn.q_proj.act_perm"] = torch.arange(cfg.hidden).flip(0)
    with pytest.raises(CompileError, match="act-order"):
        build_image(cfg, w)


def test_plan_regions_are_aligned_and_disjoint():
    plan = plan_memory(small_cfg("bitnet", 2), context=32)
    spans = {p: [] for p in range(plan.geo.ports)}
    for r in plan.regions.values():
        assert r.base % 32 == 0 and r.per_port % 32 == 0
        ports = [r.port] if r.kind == "single" else range(plan.geo.ports)
        for p in ports:
            spans[p].append((r.base, r.base + r.per_port, r.name))
    for p, s in spans.items():
        s.sort()
        for (a0, a1, n0), (b0, b1, n1) in zip(s, s[1:]):
            assert a1 <= b0, f"channel {p}: {n0} overlaps {n1}"
    # initialized data first, zero state above it
    for r in plan.regions.values():
        if not r.init:
            assert r.base >= plan.init_top[r.port]


# ---------------------------------------------------------------------------------------------
# image bytes
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bitnet_image():
    cfg = small_cfg("bitnet", 2)
    w = weights_for(cfg)
    return build_image(cfg, w), GoldenModel.from_config_and_weights(cfg, w, linear_path="matmul")


@pytest.fixture(scope="module")
def llama_image():
    cfg = small_cfg("llama", 16)
    w = weights_for(cfg)
    return build_image(cfg, w), GoldenModel.from_config_and_weights(cfg, w, linear_path="matmul")


def _merge(images, nbytes, ports):
    """Logical stream from per-port images (beat i on port i % ports at (i // ports) * 32)."""
    beats = -(-nbytes // 32)
    out = bytearray()
    for i in range(beats):
        out += images[i % ports][(i // ports) * 32:(i // ports + 1) * 32]
    return bytes(out[:nbytes])


def test_tlmm_streams_are_pack_keys_beats_striped_like_the_dma(bitnet_image):
    image, gm = bitnet_image
    t = image.plan.tlmm
    prefix = "model.layers.1.mlp.down_proj"
    keys = gm.linears[prefix][0]
    expect = pack_keys(keys, t.tables, t.lanes, t.beat_bits).reshape(-1).numpy().tobytes()
    r = image.plan[f"weights:{prefix}.keys"]
    assert r.nbytes == len(expect)
    # hw/dma.stripe_split gives each port's bytes for the same layout: the image holds exactly them
    per_port = stripe_split(expect, stripe_layout(len(expect), r.nports, base=r.base))
    for j, data in enumerate(per_port):
        ch = image.channels[(r.port + j) % image.plan.geo.ports]
        assert ch[r.base:r.base + len(data)].tobytes() == data
    assert _merge([image.channels[p][r.base:].tobytes() for p in range(32)], r.nbytes, 32) == expect
    # the TLMM immediate is float32(gamma) / float32(127)
    gamma = gm.linears[prefix][2]
    g127 = torch.as_tensor(gamma, dtype=torch.float32) / torch.tensor(127.0)
    assert image.plan.g127[prefix] == isa.f32_bits(float(g127))


def test_gptq_words_fp16_head_and_embeddings(llama_image):
    image, gm = llama_image
    plan = image.plan
    prefix = "model.layers.0.mlp.up_proj"
    q, zeros, scales, _ = gm.linears[prefix]
    packed = pack_gptq(q, zeros, scales)
    for part in ("qweight", "scales", "qzeros"):
        r = plan[f"weights:{prefix}.{part}"]
        raw = _merge([image.channels[p][r.base:].tobytes() for p in range(32)], r.nbytes, 32)
        assert raw == packed[part].contiguous().numpy().astype(packed[part].numpy().dtype.newbyteorder("<")).tobytes()
    r = plan["lm_head:fp16"]
    raw = _merge([image.channels[p][r.base:].tobytes() for p in range(32)], r.nbytes, 32)
    assert raw == to_fp16_sat(gm.embed if plan.cfg.tie_word_embeddings else gm.lm_head16.float()).numpy().tobytes()
    emb = plan["embed:tokens"]
    for tok in (0, 33, plan.cfg.vocab - 1):
        ch = image.channels[(emb.port + tok % 32) % 32]
        off = emb.base + (tok // 32) * emb.row_bytes
        row = np.frombuffer(ch[off:off + plan.cfg.hidden * 4].tobytes(), dtype="<f4")
        assert np.array_equal(row, gm.embed[tok].numpy())


def test_kv_layout_descriptor_and_placement(bitnet_image):
    image, _ = bitnet_image
    kv, geo = image.plan.kv, image.plan.geo
    raw = image.channels[geo.split(image.plan.addr("desc:kv"))[0]][:KV_DESC_BYTES].tobytes()
    assert KVLayout.from_bytes(raw) == kv
    # a token's whole KV slot on one port, tokens round-robin over the ports
    for t in range(40 if kv.max_pos > 40 else kv.max_pos):
        ch0, local0 = geo.split(kv.slot_addr(geo, 1, t))
        assert ch0 == t % 32
        assert geo.split(kv.slot_addr(geo, 1, t) + kv.slot_bytes - 1)[0] == ch0
    assert kv.ring_rows == image.cfg.kv_residual + image.cfg.kv_group
    with pytest.raises(Exception, match="bad magic"):
        KVLayout.from_bytes(bytes(KV_DESC_BYTES))


# ---------------------------------------------------------------------------------------------
# image files
# ---------------------------------------------------------------------------------------------
def test_image_roundtrip_and_corruption(tmp_path, bitnet_image):
    image, _ = bitnet_image
    out = write_image(image, tmp_path / "img")
    back = read_image(out)
    assert all(np.array_equal(a, b) for a, b in zip(back.channels, image.channels))
    assert back.plan.g127 == image.plan.g127 and back.plan.kv == image.plan.kv
    hbm = out / "hbm.bin"
    data = bytearray(hbm.read_bytes())
    data[100] ^= 1
    hbm.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="SHA-256 mismatch"):
        read_image(out)
    hbm.write_bytes(bytes(data[:-5]))
    with pytest.raises(ImageError, match="truncated"):
        read_image(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ImageError, match="unreadable manifest"):
        read_image(out)
    (out / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ImageError, match="format must be 'ternopu-hbm-image'"):
        read_image(out)
    (out / "manifest.json").write_text(json.dumps({"format": "ternopu-hbm-image", "version": 1,
                                                   "isa_version": [1, 1], "model": {"name": "x"}}))
    with pytest.raises(ImageError, match="malformed manifest"):
        read_image(out)
    with pytest.raises(ImageError, match="no manifest.json"):
        read_image(tmp_path / "nothing")


def test_image_write_is_atomic(tmp_path, bitnet_image, monkeypatch):
    image, _ = bitnet_image
    target = write_image(image, tmp_path / "img")
    before = (target / "hbm.bin").read_bytes()
    import ternopu.sw.compiler.image as image_mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(image_mod.json, "dumps", boom)
    with pytest.raises(OSError, match="disk full"):
        write_image(image, target)
    assert (target / "hbm.bin").read_bytes() == before  # the old image is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]  # no temporary left behind
    other = tmp_path / "not_an_image"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    monkeypatch.undo()
    with pytest.raises(ImageError, match="not a ternopu image"):
        write_image(image, other)


# ---------------------------------------------------------------------------------------------
# programs
# ---------------------------------------------------------------------------------------------
def _sections(instrs):
    """Split at barriers (SYNC of all queues, SKIP_IF) like the compiler's Emitter."""
    cur = []
    for ins in instrs:
        cur.append(ins)
        if (ins.opcode == "SYNC" and ins["queues"] == ALL_QUEUES) or ins.opcode == "SKIP_IF":
            yield cur
            cur = []
    yield cur


def test_program_structure_and_token_balance(bitnet_image):
    image, _ = bitnet_image
    cfg = image.cfg
    prog = step_program(image.plan, 5, 17)
    instrs = isa.decode_program(prog.code)
    names = [i.opcode for i in instrs]
    assert names[0] == "LOAD" and names[-1] == "END" and names[-2] == "MASK_STORE"
    routed = 2 * cfg.layers - 1  # layer 0 attention never skips
    assert names.count("ROUTER") == names.count("SKIP_IF") == routed
    assert names.count("TLMM") == 7 * cfg.layers and names.count("PE_LINEAR") == 1  # FP16 LM head
    assert names.count("KV_APPEND") == cfg.layers * cfg.kv_heads
    assert names.count("PE_ATTN") == 2 * cfg.layers * cfg.heads
    for pc, ins in enumerate(instrs):
        if ins.opcode == "SKIP_IF":
            assert ins.wait == isa.unit_mask("PE") and instrs[pc - 1].opcode == "ROUTER"
            assert instrs[pc - 1].release & isa.unit_mask("CTRL")
            target = instrs[pc + 1 + ins["count"]]
            assert target.opcode == "SYNC" and target["queues"] == ALL_QUEUES
        if ins.opcode == "PE_ATTN":
            assert ins["tokens"] == 6
    # every release is consumed by a wait inside the same barrier section (skips leave no tokens)
    for sec in _sections(instrs):
        bal = np.zeros((isa.NUM_UNITS, isa.NUM_UNITS), dtype=int)
        for ins in sec:
            u = int(ins.unit)
            for p in range(isa.NUM_UNITS):
                bal[p, u] -= ins.wait >> p & 1
                bal[u, p] += ins.release >> p & 1
        assert not bal.any()
    assert prog.instructions * 32 == len(prog.code)


def test_prefill_program_has_one_lm_head(bitnet_image):
    image, _ = bitnet_image
    prog = tokens_program(image.plan, 0, [1, 2, 3])
    names = [i.opcode for i in isa.decode_program(prog.code)]
    assert names.count("PE_LINEAR") == 1 and names.count("MASK_STORE") == 3 and names.count("END") == 1
    with pytest.raises(CompileError, match="exceed the planned context"):
        tokens_program(image.plan, image.plan.context - 1, [1, 2])
    with pytest.raises(CompileError, match=r"token id must lie in \[0, 127\]"):
        step_program(image.plan, 0, 128)
