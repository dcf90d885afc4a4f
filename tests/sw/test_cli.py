"""``ternopu`` CLI: compile / run / report / plan, JSON reports, clean errors (exit 2, no traceback)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ternopu.golden.loaders import save_gptq_checkpoint, save_hf_checkpoint
from ternopu.sw.cli import EXIT_USAGE, main

sys.path.insert(0, str(Path(__file__).parent))
from test_golden_iss import small_cfg, weights_for  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    bcfg = small_cfg("bitnet", 2)
    lcfg = small_cfg("llama", 16, routers=False)
    bit = save_hf_checkpoint(root / "bitnet", bcfg, weights_for(bcfg))
    llama = save_gptq_checkpoint(root / "llama", lcfg, weights_for(lcfg))
    return bit, llama


def _err(capsys):
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return out.err


def test_compile_run_report(tmp_path, checkpoints, capsys):
    bit, llama = checkpoints
    img = tmp_path / "img"
    assert main(["compile", "--model", str(bit), "--out", str(img)]) == 0
    assert (img / "manifest.json").is_file() and (img / "hbm.bin").is_file()
    rep = tmp_path / "r.json"
    assert main(["run", "--image", str(img), "--backend", "golden", "--prompt", "1,2,3", "--tokens", "3",
                 "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    data = json.loads(rep.read_text())
    assert data["format"] == "ternopu-run-report" and data["backend"] == "golden"
    assert len(data["tokens"]) == 3 and f"tokens: {','.join(map(str, data['tokens']))}" in out
    assert data["model"]["kv_bits"] == 2 and data["model"]["routers"] is True
    assert len(data["bytes_per_port"]["read"]) == 32 and all(b > 0 for b in data["bytes_per_port"]["read"])
    assert data["cycles_per_token"] is None and "functional" in data["cycles_note"]
    assert data["decode_read_bytes_per_token"] > 0 and data["bandwidth"]["clock_hz"] == 300e6
    assert data["kv"]["bytes_dense"] >= data["kv"]["bytes_stored"] > 0
    assert len(data["programs"]) == 3  # prefill program + 2 decode steps
    assert main(["report", str(rep)]) == 0
    table = capsys.readouterr().out
    assert "KV bytes saved" in table and "HBM bytes per port" in table
    # the INT4 Llama (GPTQ) compiles and runs too
    img2 = tmp_path / "img2"
    assert main(["compile", "--model", str(llama), "--out", str(img2)]) == 0
    assert main(["run", "--image", str(img2), "--prompt", "5", "--tokens", "2"]) == 0


def test_bad_inputs_exit_2_with_message(tmp_path, checkpoints, capsys):
    bit, llama = checkpoints
    assert main(["compile", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == EXIT_USAGE
    assert "no such checkpoint directory" in _err(capsys)
    # unsupported architecture
    bad = tmp_path / "gpt2"
    bad.mkdir()
    cfg = json.loads((bit / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((bit / "model.safetensors").read_bytes())
    assert main(["compile", "--model", str(bad), "--out", str(tmp_path / "o")]) == EXIT_USAGE
    assert "GPT2LMHeadModel" in _err(capsys)
    assert not (tmp_path / "o").exists()  # nothing half-written
    # truncated weights file
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "config.json").write_text((bit / "config.json").read_text())
    (trunc / "model.safetensors").write_bytes((bit / "model.safetensors").read_bytes()[:1000])
    assert main(["compile", "--model", str(trunc), "--out", str(tmp_path / "o")]) == EXIT_USAGE
    assert "model.safetensors" in _err(capsys)
    assert not (tmp_path / "o").exists()
    # routers requested for a checkpoint that has none
    assert main(["compile", "--model", str(llama), "--out", str(tmp_path / "o"), "--routers"]) == EXIT_USAGE
    assert "router" in _err(capsys)
    # a model that does not fit: fails before any weight is generated
    assert main(["compile", "--preset", "Llama-2-7B", "--max-pos", "32768", "--context", "32768",
                 "--out", str(tmp_path / "o")]) == EXIT_USAGE
    assert "does not fit the u280 HBM" in _err(capsys)
    assert main(["compile", "--preset", "gpt-9", "--out", str(tmp_path / "o")]) == EXIT_USAGE
    assert "unknown preset 'gpt-9'" in _err(capsys)
    # malformed image, bad prompt, unknown report
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "manifest.json").write_text("[]")
    assert main(["run", "--image", str(junk), "--prompt", "1", "--tokens", "1"]) == EXIT_USAGE
    assert "format must be" in _err(capsys)
    assert main(["run", "--image", str(junk), "--prompt", "1,x", "--tokens", "1"]) == EXIT_USAGE
    assert "comma-separated token ids" in _err(capsys)
    assert main(["report", str(junk / "manifest.json")]) == EXIT_USAGE
    assert "not a ternopu run report" in _err(capsys)
    assert main(["run", "--image", str(junk), "--backend", "xrt", "--prompt", "1"]) == EXIT_USAGE


def test_token_out_of_vocab_and_context(tmp_path, checkpoints, capsys):
    bit, _ = checkpoints
    img = tmp_path / "img"
    assert main(["compile", "--model", str(bit), "--out", str(img), "--context", "4"]) == 0
    capsys.readouterr()
    assert main(["run", "--image", str(img), "--prompt", "999", "--tokens", "1"]) == EXIT_USAGE
    assert "token id must lie in [0, 127]" in _err(capsys)
    assert main(["run", "--image", str(img), "--prompt", "1,2,3", "--tokens", "3"]) == EXIT_USAGE
    assert "exceed the planned context of 4 tokens" in _err(capsys)


def test_plan_command(capsys):
    assert main(["plan", "--preset", "bitnet-b1.58-2B-4T"]) == 0
    out = capsys.readouterr().out
    assert "fits: True" in out and "weights" in out


def test_console_script_help():
    exe = Path(sys.executable).with_name("ternopu")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ternopu.sw.cli"]
    res = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "compile" in res.stdout and "report" in res.stdout
