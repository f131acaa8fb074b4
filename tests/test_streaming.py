"""Streamed PTQ (golden_ptq.streaming): bit-identical to PTQ.apply in memory, every source format,
the written folder deploys, refusals, and peak memory flat in the number of layers."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import save_file

from golden_ptq import PTQ, PTQConfig, PTQMode
from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.deploy import load_quantized, packaged_quant_config, save_quantized, shipped_quant_configs
from golden_ptq.io.checkpoint import load_full_checkpoint
from golden_ptq.io.folder_set import verify_folder_set
from golden_ptq.io.safetensors_files import open_safetensors
from golden_ptq.io.sharded_writer import ShardedSafetensorsWriter, bfloat16_bits
from golden_ptq.io.tensor_names import HF_GLOBAL, HF_PER_LAYER, name_map
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders import load_gguf, load_hf
from golden_ptq.streaming import quantize_streamed
from test_loaders import write_gguf, write_tokenizer

import mindspore as ms

I8 = ms.int8
SET_FILES = ("quant_desc.json", "ptq_config.yaml", "network.yaml")


def tiny(tied=False, layers=2):
    return LlamaConfig(vocab_size=97, hidden_size=64, num_layers=layers, num_heads=4, num_kv_heads=2,
                       intermediate_size=96, max_position_embeddings=128, tie_word_embeddings=tied, rms_norm_eps=1e-5)


def calibration(vocab=97, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, vocab, size=(1, n)) for n in (24, 24, 17)]   # two lengths: two batches


def write_hf_folder(folder, config, seed=0, dtype="bf16"):
    """A random float Llama in HF layout: config.json, one safetensors shard per decoder layer + index."""
    arrays = {k: v.asnumpy() for k, v in LlamaForCausalLM(config, seed=seed).parameters_and_names()}
    mapping = name_map(config.num_layers, HF_PER_LAYER, HF_GLOBAL)
    os.makedirs(folder, exist_ok=True)
    cfg = {"model_type": "llama", "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
           "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
           "num_key_value_heads": config.num_kv_heads, "intermediate_size": config.intermediate_size,
           "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
           "max_position_embeddings": config.max_position_embeddings,
           "tie_word_embeddings": config.tie_word_embeddings}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(cfg, handle)
    writer = ShardedSafetensorsWriter(folder)
    units = [f"model.layers.{i}." for i in range(config.num_layers)] + [""]
    for prefix in units:
        names = [k for k in arrays if (k.startswith(prefix) if prefix else not k.startswith("model.layers."))]
        if dtype == "bf16":
            writer.write_shard({mapping[k]: bfloat16_bits(arrays[k]) for k in names}, {mapping[k]: "BF16" for k in names})
        else:
            writer.write_shard({mapping[k]: arrays[k].astype(np.float16 if dtype == "fp16" else np.float32)
                                for k in names})
    writer.finish()
    return folder


def in_memory(network, config, data, folder, tokenizer=None, **kwargs):
    ptq = PTQ(config, **kwargs)
    ptq.apply(network, None, data)
    ptq.convert(network)
    save_quantized(network, ptq, str(folder), tokenizer=tokenizer)
    return network, ptq


def assert_same_folders(memory, streamed, extra=()):
    """Every tensor equal (values, dtype, shape) and the set's description files byte-identical."""
    a = open_safetensors(os.path.join(memory, "model.safetensors"))
    b = open_safetensors(str(streamed))
    assert a.names() == b.names()
    for name in a.names():
        x, y = a.get(name), b.get(name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    for file in SET_FILES + tuple(extra):
        with open(os.path.join(memory, file), "rb") as f1, open(os.path.join(streamed, file), "rb") as f2:
            assert f1.read() == f2.read(), file
    verify_folder_set(str(streamed))


def same_records(ptq_a, ptq_b):
    return ([(r.name, r.became) for r in ptq_a.records] == [(r.name, r.became) for r in ptq_b.records]
            and ptq_a.range_parms == ptq_b.range_parms)


@pytest.mark.parametrize("name", shipped_quant_configs())
def test_streamed_equals_in_memory_for_every_shipped_config(tmp_path, name):
    src = write_hf_folder(str(tmp_path / "src"), tiny(), seed=3)
    config = PTQConfig.load(packaged_quant_config(name))
    _, ptq = in_memory(load_hf(src), config, calibration(), tmp_path / "memory")
    streamed = quantize_streamed(src, config, calibration(), str(tmp_path / "streamed"), progress=False)
    assert_same_folders(str(tmp_path / "memory"), str(tmp_path / "streamed"))
    assert same_records(ptq, streamed) and streamed.summary().splitlines()[:-1] == ptq.summary().splitlines()[:-1]
    shards = [f for f in os.listdir(tmp_path / "streamed") if f.endswith(".safetensors")]
    assert len(shards) == 4   # embedding, two decoder layers, head


@pytest.mark.parametrize("kwargs, dtype", [
    # tied head quantized per channel shares the int8 embedding table (neither is written under lm_head)
    (dict(embedding_quant_dtype=I8), "fp16"),
    # tied float head (blacklisted) is the float embedding table; W8A8 static with smoothing
    (dict(act_quant_dtype=I8, opname_blacklist=["lm_head"], outliers_suppression="smooth"), "fp32"),
    # rotation unties the head: lm_head = (embedding * final norm) Q, the embedding E Q, both per unit
    (dict(act_quant_dtype=I8, act_quant_granularity="PER_TOKEN", embedding_quant_dtype=I8, rotation="hadamard",
          anti_method="m1"), "bf16"),
    # each layer calibrated on the float network's activations (one pass per layer), GPTQ and m2
    (dict(act_quant_dtype=I8, anti_method="m2", precision_recovery="GPTQ",
          algo_args={"calibration_inputs": "float", "gptq_act_order": True}), "fp32"),
])
def test_tied_heads_and_spilled_activations(tmp_path, kwargs, dtype):
    """Every boundary spilled to a memory map (spill_bytes=0) gives the same bits as in memory."""
    src = write_hf_folder(str(tmp_path / "src"), tiny(tied=True, layers=3), seed=4, dtype=dtype)
    config = PTQConfig(**kwargs)
    in_memory(load_hf(src), config, calibration(), tmp_path / "memory")
    quantize_streamed(src, config, calibration(), str(tmp_path / "streamed"), progress=False, spill_bytes=0)
    assert_same_folders(str(tmp_path / "memory"), str(tmp_path / "streamed"))
    assert not any(f.startswith(".") for f in os.listdir(tmp_path / "streamed"))   # spill files are gone


@pytest.mark.parametrize("tied, kwargs", [
    (False, dict(act_quant_dtype=I8, opname_blacklist=["lm_head"])),            # float embedding, float head
    (True, dict(embedding_quant_dtype=I8, opname_blacklist=["lm_head"])),       # tied float head of an int8 embedding
    (True, dict(act_quant_dtype=I8, opname_blacklist=["lm_head"])),             # tied: the head is the embedding
])
def test_float_vocabulary_tables_are_never_read_whole(tmp_path, monkeypatch, tied, kwargs):
    """A table that stays float is copied block by block and the embedding holds only the calibration
    tokens' rows: reading either table whole fails here, and the bits still match the in-memory path."""
    import golden_ptq.streaming.float_source as float_source
    from golden_ptq.io.safetensors_files import SafetensorsFiles
    config = LlamaConfig(**{**tiny(tied).to_dict(), "vocab_size": 1000})
    src = write_hf_folder(str(tmp_path / "src"), config, seed=6)
    data = calibration(vocab=1000)
    in_memory(load_hf(src), PTQConfig(**kwargs), data, tmp_path / "memory")
    whole, rows = SafetensorsFiles.get, SafetensorsFiles.get_rows
    blocks = []

    def get(self, name):
        if name.endswith(("embed_tokens.weight", "lm_head.weight")) and not kwargs.get("embedding_quant_dtype"):
            raise AssertionError(f"{name} read whole")
        return whole(self, name)

    def get_rows(self, name, start, stop):
        blocks.append((name, start, stop))
        return rows(self, name, start, stop)

    monkeypatch.setattr(SafetensorsFiles, "get", get)
    monkeypatch.setattr(SafetensorsFiles, "get_rows", get_rows)
    monkeypatch.setattr(float_source, "BLOCK_BYTES", 300 * 64 * 4)   # 300 rows a block: 4 blocks
    quantize_streamed(src, PTQConfig(**kwargs), data, str(tmp_path / "streamed"), progress=False)
    monkeypatch.undo()
    assert_same_folders(str(tmp_path / "memory"), str(tmp_path / "streamed"))
    assert blocks and all(stop - start <= 300 for _, start, stop in blocks)


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_mindformers_named_source_with_model_config(tmp_path, fmt, monkeypatch):
    config = tiny()
    net = LlamaForCausalLM(config, seed=5)
    path = str(tmp_path / f"float.{fmt}")
    if fmt == "ckpt":   # MindSpore writes large tensors as several values; make these tiny ones split too
        from mindspore.train import serialization
        monkeypatch.setattr(serialization, "SLICE_SIZE", 8)   # KB
        ms.save_checkpoint(net, path)
    else:
        save_file({k: v.asnumpy() for k, v in net.parameters_and_names()}, path)
    reference = LlamaForCausalLM(config)
    load_full_checkpoint(path, reference)
    reference.set_train(False)
    quant = PTQConfig(act_quant_dtype=I8, kvcache_quant_dtype=I8)
    in_memory(reference, quant, calibration(), tmp_path / "memory")
    with pytest.raises(ValueError, match="no config.json beside the weights; pass model_config"):
        quantize_streamed(path, quant, calibration(), str(tmp_path / "streamed"), progress=False)
    quantize_streamed(path, quant, calibration(), str(tmp_path / "streamed"), progress=False, model_config=config)
    assert_same_folders(str(tmp_path / "memory"), str(tmp_path / "streamed"))


def test_gguf_source_unpermutes_and_keeps_its_tokenizer(tmp_path):
    hf_tok = write_tokenizer(tmp_path)
    tokens = [t for t, _ in sorted(hf_tok.get_vocab().items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(hf_tok.to_str())["model"]["merges"]]
    config = tiny()
    config.vocab_size = len(tokens)
    weights = {k: v.asnumpy() for k, v in LlamaForCausalLM(config, seed=6).parameters_and_names()}
    write_gguf(tmp_path / "m.gguf", config, weights, tokens, merges)
    network, tokenizer = load_gguf(str(tmp_path / "m.gguf"))
    quant = PTQConfig(act_quant_dtype=I8, kvcache_quant_dtype=I8, anti_method="m1",
                      algo_args={"kvcache_scheme": "token_values"})
    data = calibration(len(tokens))
    in_memory(network, quant, data, tmp_path / "memory", tokenizer)
    quantize_streamed(str(tmp_path / "m.gguf"), quant, data, str(tmp_path / "streamed"), progress=False)
    assert_same_folders(str(tmp_path / "memory"), str(tmp_path / "streamed"),
                        extra=("tokenizer.json", "tokenizer_config.json"))


def test_streamed_folder_deploys_with_the_same_logits(tmp_path):
    src = write_hf_folder(str(tmp_path / "src"), tiny(), seed=7)
    quant = PTQConfig(act_quant_dtype=I8)
    quantized, ptq = in_memory(load_hf(src), quant, calibration(), tmp_path / "memory", measure_sensitivity=True)
    streamed = quantize_streamed(src, quant, calibration(), str(tmp_path / "streamed"), progress=False,
                                 measure_sensitivity=True)
    assert streamed.output_errors == ptq.output_errors and len(ptq.output_errors) == 15   # 7 per layer + head
    assert PTQConfig.load(str(tmp_path / "streamed" / "ptq_config.yaml")).mode is PTQMode.DEPLOY
    network, _ = load_quantized(str(tmp_path / "streamed"))  # the sharded form, read tensor by tensor
    ids = np.random.RandomState(1).randint(0, 97, size=(2, 11))
    np.testing.assert_array_equal(network(Tensor(ids)).asnumpy(), quantized(Tensor(ids)).asnumpy())


def test_refusals_name_the_field_and_leave_no_folder(tmp_path):
    src = write_hf_folder(str(tmp_path / "src"), tiny(), seed=8)
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"disable_level 'L2' is not supported when streaming.*disable_names"):
        quantize_streamed(src, PTQConfig(disable_level="L2"), calibration(), out, progress=False)
    with pytest.raises(ValueError, match="opname_blacklist entry 'nope' matches no quantizable layer"):
        quantize_streamed(src, PTQConfig(opname_blacklist=["nope"]), calibration(), out, progress=False)
    with pytest.raises(ValueError, match="calibration row 0"):
        quantize_streamed(src, PTQConfig(), [np.array([[5, 500]])], out, progress=False)
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"\xff\x01garbage")
    with pytest.raises(ValueError, match=r"m.ckpt: not a readable MindSpore checkpoint at byte 0"):
        quantize_streamed(str(ckpt), PTQConfig(), calibration(), out, progress=False, model_config=tiny())
    assert not os.path.exists(out)
    # a layer whose weights are not finite fails naming it; the half-written set is not left behind
    files = open_safetensors(src)
    bad = files.get("model.layers.1.mlp.down_proj.weight")
    bad[0, 0] = np.nan
    broken = str(tmp_path / "broken")
    os.makedirs(broken)
    for file in ("config.json",):
        with open(os.path.join(src, file), "rb") as handle, open(os.path.join(broken, file), "wb") as copy:
            copy.write(handle.read())
    save_file({**{n: files.get(n) for n in files.names()}, "model.layers.1.mlp.down_proj.weight": bad},
              os.path.join(broken, "model.safetensors"))
    with pytest.raises(ValueError, match="layer 'model.layers.1.feed_forward.w2'.*non-finite"):
        quantize_streamed(broken, PTQConfig(), calibration(), out, progress=False)
    assert not os.path.exists(out) and not [f for f in os.listdir(tmp_path) if f.startswith(".out")]


def test_peak_memory_does_not_grow_with_layers():
    """Peak RSS of a streamed quantization (fresh process each) for 2 and 10 decoder layers of
    ~7.7 MB float each: the in-memory path would grow by ~8 float layers; streamed stays within 2."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          "streaming_memory.py")
    done = subprocess.run([sys.executable, script, "--layers", "2", "10", "--hidden", "384", "--intermediate", "1152",
                           "--config", "default", "--tokens", "32", "--rows", "2", "--modes", "stream", "--json"],
                          check=True, capture_output=True, text=True, timeout=600)
    peaks = {r["layers"]: r["peak_rss_mb"] for r in map(json.loads, done.stdout.strip().splitlines())}
    layer_mb = (4 * 384 * 384 + 3 * 384 * 1152) * 4 / 2**20
    assert peaks[10] - peaks[2] < 2 * layer_mb, peaks


@pytest.mark.slow
def test_smollm2_streamed_equals_in_memory(tmp_path):
    from golden_ptq.networks.default_model import default_gguf_path
    path = default_gguf_path()
    network, tokenizer = load_gguf(path)
    config = PTQConfig.load(packaged_quant_config("a8w8_smooth"))
    rng = np.random.RandomState(0)
    data = [rng.randint(0, network.config.vocab_size, size=(1, 64)) for _ in range(2)]
    _, ptq = in_memory(network, config, data, tmp_path / "memory", tokenizer)
    del network
    streamed = quantize_streamed(path, config, data, str(tmp_path / "streamed"), progress=False)
    assert_same_folders(str(tmp_path / "memory"), str(tmp_path / "streamed"), extra=("tokenizer.json",))
    assert same_records(ptq, streamed)


@pytest.mark.parametrize("crc", [False, True])
def test_ckpt_reader_matches_mindspore(tmp_path, monkeypatch, crc):
    """Sliced tensors, bf16, int8 and the CRC trailer read as MindSpore's own loader reads them."""
    from mindspore.train import serialization
    from golden_ptq.io.ckpt_files import CkptFiles
    monkeypatch.setattr(serialization, "SLICE_SIZE", 4)   # KB: the 12 KB tensor is written in 3 values
    rng = np.random.RandomState(0)
    arrays = {"a.weight": rng.randn(1000, 3).astype(np.float32), "b": rng.randn(5).astype(np.float16),
              "c": np.arange(6, dtype=np.int8).reshape(2, 3)}
    entries = [{"name": k, "data": Tensor(v)} for k, v in arrays.items()]
    entries.append({"name": "d", "data": Tensor(rng.randn(4, 4).astype(np.float32), ms.bfloat16)})
    path = str(tmp_path / "t.ckpt")
    ms.save_checkpoint(entries, path, crc_check=crc)
    files, reference = CkptFiles(path), ms.load_checkpoint(path)
    assert files.names() == ["a.weight", "b", "c", "d"] and files.shape("a.weight") == (1000, 3)
    for name in arrays:
        got = files.get(name)
        assert got.dtype == arrays[name].dtype
        np.testing.assert_array_equal(got, arrays[name])
    np.testing.assert_array_equal(files.get("d"), reference["d"].float().asnumpy())
    assert files.get("missing") is None
