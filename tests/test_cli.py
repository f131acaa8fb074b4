"""The command line on a tiny random network (real tokenizer, real text): jobs, saved folder, errors."""
import os
import subprocess
import sys

import pytest
import yaml

from golden_ptq.cli import main

SMALL = ["--seq-length", "32", "--batch-size", "2", "--quiet"]


@pytest.fixture
def tiny_network_yaml(tmp_path, smollm2_gguf):
    config = {"model": {"source": "random", "seed": 0, "tokenizer": "default",
                        "config": dict(vocab_size=49152, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                       intermediate_size=48, max_position_embeddings=64)}}
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def quantized(tmp_path, tiny_network_yaml, capsys):
    out = tmp_path / "run"
    assert main(["quantize", "--network-config", tiny_network_yaml, "--quant-config", "a8w8_smooth_c8",
                 "--output", str(out), "--calib-samples", "2", "--eval-windows", "2", *SMALL]) == 0
    return out, capsys.readouterr().out


def test_quantize_writes_one_self_contained_folder(quantized):
    out, printed = quantized
    lines = printed.strip().splitlines()
    assert len(lines) <= 25
    assert lines[0].startswith("quantized a8w8_smooth_c8: W8A8 ") and "FLOAT 4" in lines[0] and "C8 2" in lines[0]
    assert "perplexity on 64 held-out tokens: FP32 " in printed and "(ratio " in printed
    assert f"output: {out}" in printed
    names = set(os.listdir(out))
    assert {"model.safetensors", "quant_desc.json", "ptq_config.yaml", "network.yaml", "tokenizer.json",
            "tokenizer_config.json", "report.md", "manifest.json"} <= names
    assert "FLOAT (opname_blacklist 'w2')" in (out / "report.md").read_text()
    assert oct(os.stat(out / "model.safetensors").st_mode & 0o777) == oct(0o666 & ~_umask())


def test_calibration_inputs_option_reaches_the_saved_config(tmp_path, tiny_network_yaml, capsys):
    out = tmp_path / "float-inputs"
    assert main(["quantize", "--network-config", tiny_network_yaml, "--quant-config", "a8w8_dynamic",
                 "--calibration-inputs", "float", "--output", str(out), "--calib-samples", "2", "--eval-windows",
                 "2", *SMALL]) == 0
    assert "(ratio " in capsys.readouterr().out
    saved = yaml.safe_load((out / "ptq_config.yaml").read_text())
    assert saved["algo_args"]["calibration_inputs"] == "float" and saved["mode"] == "DEPLOY"


def test_eval_and_generate_use_the_folder_alone(quantized, capsys):
    out, _ = quantized
    assert main(["eval", "--model", str(out), "--eval-windows", "2", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"quantized model {out}") and "perplexity " in printed and "on 64 tokens" in printed
    assert main(["generate", "Call me", "--model", str(out), "--max-new-tokens", "3", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("Call me")


def test_float_generate(tiny_network_yaml, capsys):
    assert main(["generate", "Call me", "--network-config", tiny_network_yaml, "--max-new-tokens", "3", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("Call me")


def test_analyze_and_tune(tmp_path, tiny_network_yaml, capsys):
    report = tmp_path / "analysis"
    assert main(["analyze", "--network-config", tiny_network_yaml, "--quant-config", "a8w8_smooth",
                 "--calib-samples", "2", "--output", str(report), "--seq-length", "32", "--quiet"]) == 0
    assert "most sensitive by output error" in capsys.readouterr().out
    assert (report / "sensitivity.csv").exists() and (report / "sensitivity.png").exists()
    tuned = tmp_path / "tuned"
    assert main(["tune", "--network-config", tiny_network_yaml, "--quant-config", "a8w8_smooth", "--target", "1.0",
                 "--calib-samples", "2", "--eval-windows", "2", "--output", str(tuned), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "target perplexity ratio 1 " in printed and (tuned / "best" / "model.safetensors").exists()
    assert (tuned / "tune_log.json").exists() and (tuned / "tune_report.md").exists()


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--seq-length", "0"], "argument --seq-length: '0' must be a whole number >= 1"),
    (["quantize", "--calib-samples", "0"], "argument --calib-samples: '0' must be a whole number >= 1"),
    (["quantize", "--eval-windows", "-1"], "argument --eval-windows: '-1' must be a whole number >= 0"),
    (["quantize", "--batch-size", "two"], "argument --batch-size: 'two' is not a whole number"),
    (["quantize", "--calibration-inputs", "floats"], "argument --calibration-inputs: invalid choice: 'floats' "
                                                     "(choose from 'quantized', 'float')"),
    (["quantize", "--network-config", "missing.yaml"], "argument --network-config: file 'missing.yaml' does not exist"),
    (["eval", "--model", "no/such/folder"], "argument --model: folder 'no/such/folder' does not exist"),
    (["generate", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: '0' must be a whole number >= 1"),
    (["tune", "--target", "0"], "argument --target: '0' must be a finite number > 0"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_user_errors_print_no_traceback(tmp_path, quantized):
    out, _ = quantized
    saved_config = out / "ptq_config.yaml"  # mode: DEPLOY — must not quantize into a zero model
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-m", "golden_ptq.cli", "quantize", "--quant-config", str(saved_config),
                             "--quiet"], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{saved_config}: mode is DEPLOY" in result.stderr
    result = subprocess.run([sys.executable, "-m", "golden_ptq.cli", "quantize", "--quant-config", "a9w9", "--quiet"],
                            capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "quant config 'a9w9' is neither a file nor a shipped config; shipped: ['a16w4_g128', 'a16w8'" in result.stderr


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_quantize_stream_matches_in_memory(tmp_path, smollm2_gguf, capsys):
    """``--stream`` reads the float checkpoint one layer at a time and writes the same quantized
    model: the DEPLOY perplexity printed is the in-memory run's, digit for digit."""
    from golden_ptq.config.model_config import LlamaConfig
    from golden_ptq.io.checkpoint import save_checkpoint
    from golden_ptq.networks.llama import LlamaForCausalLM
    shape = dict(vocab_size=49152, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=48,
                 max_position_embeddings=64)
    save_checkpoint(LlamaForCausalLM(LlamaConfig(**shape), seed=1), str(tmp_path / "float.safetensors"))
    net = tmp_path / "net.yaml"
    net.write_text(yaml.safe_dump({"model": {"source": "ckpt", "path": "float.safetensors", "tokenizer": "default",
                                             "config": shape}}))
    runs = {}
    for mode in ("memory", "stream"):
        argv = ["quantize", "--network-config", str(net), "--quant-config", "a8w8_dynamic", "--output",
                str(tmp_path / mode), "--calib-samples", "2", "--eval-windows", "2", *SMALL]
        assert main(argv + (["--stream"] if mode == "stream" else [])) == 0
        runs[mode] = capsys.readouterr().out
    quantized_ppl = [line.split("quantized ")[1].split(" ")[0] for line in runs["memory"].splitlines()
                     if "held-out tokens" in line]
    assert quantized_ppl and f"quantized {quantized_ppl[0]} (FP32 not measured: --stream" in runs["stream"]
    assert "model.safetensors.index.json" in os.listdir(tmp_path / "stream")
    assert "streamed: one decoder layer at a time" in (tmp_path / "stream" / "report.md").read_text()
    assert runs["stream"].splitlines()[0] == runs["memory"].splitlines()[0]   # the same layers, the same schemes
