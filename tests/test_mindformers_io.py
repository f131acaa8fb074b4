"""MindFormers run yamls and checkpoints into golden_ptq's own network and back (no mindformers needed)."""
import os

import mindspore as ms
import numpy as np
import pytest
import yaml

from golden_ptq import PTQ, PTQConfig, PTQMode
from golden_ptq.mindformers import (export_mindformers, ffn_width, load_mf_checkpoint, load_mindformers,
                                    parse_run_config, read_mf_checkpoint, save_mf_checkpoint)
from golden_ptq.mindformers.concat import join_gate_up, join_qkv, split_concat, split_gate_up, split_qkv
from golden_ptq.mindformers.run_config import run_yaml_dict
from golden_ptq.networks.llama import LlamaForCausalLM


def _ids(config, shape=(2, 20), seed=9):
    return np.random.RandomState(seed).randint(0, config.vocab_size, shape)


def _run_yaml(**fields):
    cfg = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "vocab_size": 97}
    cfg.update(fields)
    return {"model": {"model_config": cfg, "arch": {"type": "LlamaForCausalLM"}}}


# ----- run yaml ------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden, intermediate, multiple_of, multiplier, expected", [
    (4096, None, 256, None, 11008),      # Llama 2 7B
    (4096, None, 1024, 1.3, 14336),      # Llama 3 8B
    (5120, None, 256, None, 13824),      # Llama 2 13B
    (576, 1536, 256, 1.3, 1536),         # intermediate_size wins (SmolLM2-135M)
    (64, None, None, None, 256),         # multiple_of unset: 256
])
def test_ffn_width_follows_mindformers_rule(hidden, intermediate, multiple_of, multiplier, expected):
    assert ffn_width(hidden, intermediate, multiple_of, multiplier) == expected
    data = _run_yaml(hidden_size=hidden, num_heads=hidden // 64, intermediate_size=intermediate,
                     multiple_of=multiple_of, ffn_dim_multiplier=multiplier)
    assert parse_run_config(data).llama.intermediate_size == expected


def test_run_yaml_maps_fields():
    run = parse_run_config(_run_yaml(n_kv_heads=2, theta=500000, rms_norm_eps=1e-6, seq_length=256,
                                     qkv_concat=True, param_init_type="bfloat16", qkv_has_bias=True,
                                     tie_word_embeddings=True, eos_token_id=[7, 8], compute_dtype="float16",
                                     use_past=True, use_flash_attention=True))
    llama = run.llama
    assert (llama.num_kv_heads, llama.rope_theta, llama.rms_norm_eps) == (2, 500000.0, 1e-6)
    assert llama.max_position_embeddings == 256 and run.seq_length == 256
    assert run.qkv_concat and run.param_dtype == "bfloat16" and llama.qkv_bias and llama.tie_word_embeddings
    assert llama.eos_token_id == 7


@pytest.mark.parametrize("fields, message", [
    (dict(sliding_window=4096), "model.model_config.sliding_window is not a field"),
    (dict(extend_method="LINEAR"), "extend_method = 'LINEAR' is not supported"),
    (dict(attn_proj_has_bias=True), "attn_proj_has_bias = True is not supported"),
    (dict(moe_config={"expert_num": 8}), "moe_config.expert_num = 8 is not supported"),
    (dict(compute_dtype="int4"), "compute_dtype: dtype 'int4' is not one of"),
])
def test_unsupported_run_yaml_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_run_config(_run_yaml(**fields))


def test_run_yaml_structure_errors():
    with pytest.raises(ValueError, match="no 'model.model_config' section"):
        parse_run_config({"model": {}})
    data = _run_yaml()
    data["model"]["arch"]["type"] = "GPT2LMHeadModel"
    with pytest.raises(ValueError, match="model.arch.type 'GPT2LMHeadModel' is not supported"):
        parse_run_config(data)
    data = _run_yaml()
    del data["model"]["model_config"]["hidden_size"]
    with pytest.raises(ValueError, match="model_config.hidden_size is missing"):
        parse_run_config(data)


def test_run_yaml_dict_round_trips(tiny_config):
    run = parse_run_config(run_yaml_dict(tiny_config, qkv_concat=True, param_dtype="float16"))
    assert run.llama.to_dict() == {**tiny_config.to_dict(), "pad_token_id": tiny_config.pad_token_id}
    assert run.qkv_concat and run.param_dtype == "float16"


# ----- concatenated layers -------------------------------------------------------------------
def test_qkv_concat_row_order_is_mindformers_grouped_layout():
    heads, kv_heads, head_dim = 4, 2, 3
    label = lambda kind, n: np.repeat([[kind * 100 + h] for h in range(n)], head_dim, axis=0)  # noqa: E731
    q, k, v = label(1, heads), label(2, kv_heads), label(3, kv_heads)
    joined = join_qkv(q, k, v, heads, kv_heads)[::head_dim, 0].tolist()
    # KV head 0 serves query heads 0 and 1, KV head 1 serves 2 and 3: [q.., k_g, v_g] per group
    assert joined == [100, 101, 200, 300, 102, 103, 201, 301]
    back = split_qkv(join_qkv(q, k, v, heads, kv_heads), heads, kv_heads)
    for a, b in zip(back, (q, k, v)):
        np.testing.assert_array_equal(a, b)
    gate, up = np.arange(6).reshape(3, 2), 10 + np.arange(6).reshape(3, 2)
    assert join_gate_up(gate, up)[:, 0].tolist() == [0, 10, 2, 12, 4, 14]
    for a, b in zip(split_gate_up(join_gate_up(gate, up)), (gate, up)):
        np.testing.assert_array_equal(a, b)


# ----- float round trips ---------------------------------------------------------------------
@pytest.mark.parametrize("qkv_concat", [False, True])
@pytest.mark.parametrize("dtype, fmt", [("float32", "ckpt"), ("float16", "ckpt"), ("bfloat16", "ckpt"),
                                        ("bfloat16", "safetensors"), ("float32", "safetensors")])
def test_export_and_load_round_trip(tmp_path, tiny_config, qkv_concat, dtype, fmt):
    network = LlamaForCausalLM(tiny_config, seed=0)
    ids = _ids(tiny_config)
    run = export_mindformers(network, str(tmp_path), qkv_concat=qkv_concat, param_dtype=dtype, fmt=fmt)
    assert run.qkv_concat == qkv_concat and run.param_dtype == dtype
    stored = read_mf_checkpoint(str(tmp_path / f"model.{fmt}"))
    assert any(".w_qkv." in n for n in stored) == qkv_concat
    loaded = load_mindformers(str(tmp_path / "run_llama.yaml"))
    arrays = {n: p.asnumpy() for n, p in network.parameters_and_names()}
    if dtype == "float16":
        arrays = {n: a.astype(np.float16).astype(np.float32) for n, a in arrays.items()}
    elif dtype == "bfloat16":
        arrays = {n: ms.Tensor(a).astype(ms.bfloat16).astype(ms.float32).asnumpy() for n, a in arrays.items()}
    for name, param in loaded.parameters_and_names():
        np.testing.assert_array_equal(param.asnumpy(), arrays[name], err_msg=name)
    reference = LlamaForCausalLM.from_arrays(tiny_config, arrays)
    np.testing.assert_allclose(loaded(ids).asnumpy(), reference(ids).asnumpy(), atol=1e-5, rtol=0)


def test_checkpoint_errors_name_the_tensor(tmp_path, tiny_config):
    network = LlamaForCausalLM(tiny_config, seed=0)
    path = str(tmp_path / "m.ckpt")
    arrays = {n: p.asnumpy() for n, p in network.parameters_and_names()}
    arrays["adam_m.model.norm_out.weight"] = arrays["model.norm_out.weight"]   # training state: ignored
    arrays["global_step"] = np.array([3], np.int32)
    del arrays["model.layers.1.feed_forward.w2.weight"]
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()], path)
    with pytest.raises(ValueError, match="no parameter 'model.layers.1.feed_forward.w2.weight'"):
        load_mf_checkpoint(path, LlamaForCausalLM(tiny_config))
    concat = str(tmp_path / "concat.ckpt")
    save_mf_checkpoint(network, concat, qkv_concat=True)
    with pytest.raises(ValueError, match="qkv_concat false; set model.model_config.qkv_concat: true"):
        load_mf_checkpoint(concat, LlamaForCausalLM(tiny_config), qkv_concat=False)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="unknown extension"):
        read_mf_checkpoint(str(tmp_path / "weights.bin"))


def test_yaml_paths_resolve_beside_the_yaml(tmp_path, tiny_config):
    network = LlamaForCausalLM(tiny_config, seed=1)
    export_mindformers(network, str(tmp_path / "m"))
    with open(tmp_path / "m" / "run_llama.yaml", encoding="utf-8") as handle:
        assert yaml.safe_load(handle)["load_checkpoint"] == "model.ckpt"   # relative to the yaml
    cwd = os.getcwd()
    os.chdir(str(tmp_path))
    try:
        loaded = load_mindformers("m/run_llama.yaml")
    finally:
        os.chdir(cwd)
    ids = _ids(tiny_config)
    np.testing.assert_array_equal(loaded(ids).asnumpy(), network(ids).asnumpy())


# ----- quantized checkpoints under MindFormers names ----------------------------------------
@pytest.mark.parametrize("kwargs", [dict(), dict(act_quant_dtype=ms.int8, kvcache_quant_dtype=ms.int8)],
                         ids=["a16w8", "a8w8c8"])
def test_quantized_checkpoint_with_qkv_concat_reloads_in_deploy(tmp_path, tiny_config, kwargs):
    network = LlamaForCausalLM(tiny_config, seed=0)
    rng = np.random.RandomState(0)
    ptq = PTQ(PTQConfig(**kwargs))
    ptq.apply(network, None, [rng.randint(0, tiny_config.vocab_size, (2, 24)) for _ in range(2)])
    ptq.convert(network)
    ids = _ids(tiny_config)
    quantized = network(ids).asnumpy()
    path = str(tmp_path / "q.safetensors")
    save_mf_checkpoint(network, path, qkv_concat=True)
    stored = read_mf_checkpoint(path)
    assert stored["model.layers.0.attention.w_qkv.weight"].dtype == np.int8
    assert "model.layers.0.attention.wq.weight" not in stored
    with open(tmp_path / "quant_desc.json", encoding="utf-8") as handle:
        assert "model.layers.0.feed_forward.w_gate_hidden.weight" in handle.read()
    deployed = LlamaForCausalLM(tiny_config, seed=5)
    ptq2 = PTQ(PTQConfig(mode=PTQMode.DEPLOY, **kwargs))
    ptq2.apply(deployed)
    ptq2.convert(deployed)
    load_mf_checkpoint(path, deployed, qkv_concat=True)
    np.testing.assert_array_equal(deployed(ids).asnumpy(), quantized)


def test_join_refuses_layers_quantized_differently(tmp_path, tiny_config):
    network = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(disable_names=["model.layers.0.attention.wk"]))
    ptq.apply(network, None, [np.arange(24).reshape(1, 24) % tiny_config.vocab_size])
    ptq.convert(network)
    with pytest.raises(ValueError, match="cannot join|quantized differently"):
        save_mf_checkpoint(network, str(tmp_path / "q.ckpt"), qkv_concat=True)
    assert not os.path.exists(tmp_path / "q.ckpt")


def test_split_concat_rejects_unknown_parameter(tiny_config):
    with pytest.raises(ValueError, match="'model.layers.0.attention.w_qkv.mystery' of a concatenated layer"):
        split_concat({"model.layers.0.attention.w_qkv.mystery": np.zeros(3)}, tiny_config, "x.ckpt")


@pytest.mark.slow
def test_smollm2_as_mindformers_model_round_trips(tmp_path, smollm2_gguf):
    from golden_ptq.networks.loaders import load_gguf
    network, tokenizer = load_gguf(smollm2_gguf, max_position_embeddings=256)
    ids = np.asarray([tokenizer.encode("The quick brown fox jumps over the lazy dog because")])
    reference = network(ids).asnumpy()
    export_mindformers(network, str(tmp_path), qkv_concat=True, param_dtype="float32", fmt="safetensors",
                       tokenizer={"type": "golden_ptq_default"})
    loaded = load_mindformers(str(tmp_path / "run_llama.yaml"))
    np.testing.assert_allclose(loaded(ids).asnumpy(), reference, atol=1e-5, rtol=0)


_TP_WORKER = """
import sys
import numpy as np
from golden_ptq.parallel import init_from_launcher
tp = init_from_launcher()
from golden_ptq.mindformers import load_mindformers
network = load_mindformers(sys.argv[1])
ids = np.random.RandomState(9).randint(0, network.config.vocab_size, (2, 12))
np.save(sys.argv[2] + f"/logits_{tp.rank}_of_{tp.size}.npy", network(ids).asnumpy())
np.save(sys.argv[2] + f"/wq_{tp.rank}.npy", network.model.layers[0].attention.wq.weight.asnumpy())
"""


def test_mindformers_checkpoint_loads_tensor_parallel_under_msrun(tmp_path, tiny_config):
    """Each of 2 msrun workers takes its slice of a qkv_concat MindFormers checkpoint; logits equal TP=1's."""
    import shutil
    import signal
    import subprocess
    import sys
    from test_tp_msrun import free_port, msrun_logs
    msrun = shutil.which("msrun")
    if msrun is None:
        pytest.skip("msrun (installed with mindspore) is not on PATH")
    network = LlamaForCausalLM(tiny_config, seed=0)
    export_mindformers(network, str(tmp_path), qkv_concat=True)
    worker = tmp_path / "worker.py"
    worker.write_text(_TP_WORKER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=os.pathsep.join(paths))
    log_dir = str(tmp_path / "msrun_log")
    cmd = [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}", f"--log_dir={log_dir}",
           "--join=True", str(worker), str(tmp_path / "run_llama.yaml"), str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the msrun job started here, workers included
        out, _ = proc.communicate()
        pytest.fail(f"msrun did not finish in 240 s\n{out[-3000:]}\n{msrun_logs(log_dir)}")
    assert proc.returncode == 0, f"{out[-3000:]}\n{msrun_logs(log_dir)}"
    reference = network(_ids(tiny_config, (2, 12))).asnumpy()
    wq = network.model.layers[0].attention.wq.weight.asnumpy()
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"logits_{rank}_of_2.npy"), reference, atol=1e-5, rtol=0)
        half = wq.shape[0] // 2
        np.testing.assert_array_equal(np.load(tmp_path / f"wq_{rank}.npy"), wq[rank * half:(rank + 1) * half])
