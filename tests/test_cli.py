"""The command line's main job on a tiny random network (real tokenizer, real text)."""
import json

import pytest
import yaml

from golden_ptq.cli import main


@pytest.fixture
def tiny_network_yaml(tmp_path, smollm2_gguf):
    config = {"model": {"source": "random", "seed": 0, "tokenizer": "default",
                        "config": dict(vocab_size=49152, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                       intermediate_size=48, max_position_embeddings=64)}}
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_quantize_reports_fp_and_quant_perplexity(tmp_path, tiny_network_yaml, capsys):
    out = tmp_path / "run"
    assert main(["quantize", "--network-config", tiny_network_yaml, "--quant-config", "configs/ptq/a8w8_smooth_c8.yaml",
                 "--output", str(out), "--seq-length", "32", "--calib-samples", "2", "--eval-windows", "2",
                 "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{\n"):])
    assert result["eval_tokens"] == 64 and result["calibration_tokens"] == 64
    assert result["fp32_perplexity"] > 1 and result["quant_perplexity"] > 1
    assert result["fp32_perplexity"] != result["quant_perplexity"]
    assert (out / "model.ckpt").exists() and (out / "quant_desc.json").exists() and (out / "ptq_config.yaml").exists()
    assert "FLOAT (opname_blacklist 'w2')" in printed


def test_generate_prints_continuation(tiny_network_yaml, capsys):
    assert main(["generate", "Call me", "--network-config", tiny_network_yaml, "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("Call me")
