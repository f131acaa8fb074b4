"""Loading Hugging Face directories and GGUF files, and the errors for bad checkpoints."""
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders import load_gguf, load_hf
from golden_ptq.networks.loaders.common import MissingTensorError
from golden_ptq.networks.tokenizer import Tokenizer

HF_NAMES = {
    "attention_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.wq.bias": "self_attn.q_proj.bias", "attention.wk.bias": "self_attn.k_proj.bias",
    "attention.wv.bias": "self_attn.v_proj.bias",
    "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
}


def to_hf(name):
    if name.startswith("model.layers."):
        _, _, i, rest = name.split(".", 3)
        return f"model.layers.{i}.{HF_NAMES[rest]}"
    return {"model.tok_embeddings.embedding_weight": "model.embed_tokens.weight",
            "model.norm_out.weight": "model.norm.weight", "lm_head.weight": "lm_head.weight"}[name]


def write_tokenizer(folder):
    from tokenizers import Tokenizer as HFT, models, pre_tokenizers, decoders, trainers
    tok = HFT(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["call me ishmael some years ago never mind how long precisely"] * 20, trainer)
    tok.save(str(folder / "tokenizer.json"))
    return tok


def write_hf_dir(folder, config, weights, model_type="llama", bf16=False):
    cfg = {"model_type": model_type, "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
           "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
           "num_key_value_heads": config.num_kv_heads, "intermediate_size": config.intermediate_size,
           "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
           "max_position_embeddings": config.max_position_embeddings,
           "tie_word_embeddings": config.tie_word_embeddings, "bos_token_id": 0, "eos_token_id": 1}
    (folder / "config.json").write_text(json.dumps(cfg))
    tensors = {to_hf(k): v for k, v in weights.items()}
    if bf16:
        write_bf16_safetensors(folder / "model.safetensors", tensors)
    else:
        names = sorted(tensors)  # two shards, as large checkpoints come
        save_file({k: tensors[k] for k in names[::2]}, str(folder / "model-00001-of-00002.safetensors"))
        save_file({k: tensors[k] for k in names[1::2]}, str(folder / "model-00002-of-00002.safetensors"))


def write_bf16_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        bits = (array.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(array.shape), "data_offsets": [offset, offset + len(bits)]}
        blobs.append(bits)
        offset += len(bits)
    raw = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def random_weights(config, seed):
    net = LlamaForCausalLM(config, seed=seed)
    return net, {k: v.asnumpy() for k, v in net.parameters_and_names()}


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_hf_directory_roundtrip(tmp_path, tiny_config, rng, model_type):
    tiny_config.qkv_bias = model_type == "qwen2"
    tiny_config.vocab_size = 300
    source, weights = random_weights(tiny_config, seed=11)
    write_hf_dir(tmp_path, tiny_config, weights, model_type)
    write_tokenizer(tmp_path)
    loaded = load_hf(str(tmp_path))
    assert loaded.config.qkv_bias == (model_type == "qwen2")
    ids = rng.randint(0, 300, size=(1, 10))
    np.testing.assert_array_equal(loaded(ids).asnumpy(), source(ids).asnumpy())
    tok = Tokenizer.from_hf_dir(str(tmp_path))
    assert tok.decode(tok.encode("call me ishmael")) == "call me ishmael"


def test_hf_bf16_weights_are_widened(tmp_path, tiny_config):
    tiny_config.vocab_size = 300
    _, weights = random_weights(tiny_config, seed=12)
    write_hf_dir(tmp_path, tiny_config, weights, bf16=True)
    loaded = load_hf(str(tmp_path))
    got = loaded.model.layers[0].attention.wq.weight.asnumpy()
    want = weights["model.layers.0.attention.wq.weight"]
    np.testing.assert_allclose(got, want, rtol=1 / 128)  # bf16 keeps 8 mantissa bits
    assert not np.array_equal(got, want)


def test_hf_missing_tensor_names_it(tmp_path, tiny_config):
    _, weights = random_weights(tiny_config, seed=1)
    del weights["model.layers.1.feed_forward.w2.weight"]
    write_hf_dir(tmp_path, tiny_config, weights)
    with pytest.raises(MissingTensorError, match=r"model\.layers\.1\.feed_forward\.w2\.weight.*\(64, 96\)"):
        load_hf(str(tmp_path))


def test_hf_shape_mismatch_names_tensor_and_shape(tmp_path, tiny_config):
    _, weights = random_weights(tiny_config, seed=1)
    weights["model.layers.0.attention.wk.weight"] = np.zeros((8, 64), np.float32)
    write_hf_dir(tmp_path, tiny_config, weights)
    with pytest.raises(ValueError, match=r"attention\.wk\.weight' has shape \(8, 64\), expected \(32, 64\)"):
        load_hf(str(tmp_path))


def test_hf_unsupported_architecture(tmp_path, tiny_config):
    _, weights = random_weights(tiny_config, seed=1)
    write_hf_dir(tmp_path, tiny_config, weights, model_type="gpt_neox")
    with pytest.raises(ValueError, match="architecture 'gpt_neox' is not supported"):
        load_hf(str(tmp_path))


def permute_like_llama_cpp(w, heads):
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, config, weights, tokens, merges, permute=True):
    import gguf
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([3 if t.startswith("<") else 1 for t in tokens])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    names = {"attention_norm.weight": "attn_norm", "ffn_norm.weight": "ffn_norm", "attention.wq.weight": "attn_q",
             "attention.wk.weight": "attn_k", "attention.wv.weight": "attn_v", "attention.wo.weight": "attn_output",
             "feed_forward.w1.weight": "ffn_gate", "feed_forward.w2.weight": "ffn_down",
             "feed_forward.w3.weight": "ffn_up"}
    for name, array in weights.items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            if permute and rest == "attention.wq.weight":
                array = permute_like_llama_cpp(array, config.num_heads)
            if permute and rest == "attention.wk.weight":
                array = permute_like_llama_cpp(array, config.num_kv_heads)
            gname = f"blk.{i}.{names[rest]}.weight"
        else:
            gname = {"model.tok_embeddings.embedding_weight": "token_embd.weight",
                     "model.norm_out.weight": "output_norm.weight", "lm_head.weight": "output.weight"}[name]
        writer.add_tensor(gname, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_unpermutes_q_and_k_and_rebuilds_tokenizer(tmp_path, tiny_config, rng):
    hf_tok = write_tokenizer(tmp_path)
    vocab = hf_tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) for m in json.loads(hf_tok.to_str())["model"]["merges"]]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    tiny_config.vocab_size = len(tokens)
    source, weights = random_weights(tiny_config, seed=21)
    write_gguf(tmp_path / "m.gguf", tiny_config, weights, tokens, merges)
    loaded, tok = load_gguf(str(tmp_path / "m.gguf"))
    np.testing.assert_array_equal(loaded.model.layers[1].attention.wq.weight.asnumpy(),
                                  weights["model.layers.1.attention.wq.weight"])
    ids = rng.randint(0, len(tokens), size=(1, 9))
    np.testing.assert_allclose(loaded(ids).asnumpy(), source(ids).asnumpy(), atol=1e-6)
    text = "some years ago never mind"
    assert tok.encode(text) == hf_tok.encode(text).ids
    assert tok.decode(tok.encode(text)) == text
    assert tok.eos_token_id == 1 and tok.add_bos_token is False


def test_gguf_not_a_file(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not gguf at all")
    with pytest.raises(ValueError, match="x.gguf"):
        load_gguf(str(bad))


def test_gguf_header_parser_reads_what_the_gguf_package_reads(tmp_path, rng):
    """Every metadata value type, string and numeric arrays, float and block-quantized tensors (3-D
    included), against the ``gguf`` package's own reader; a truncated file is refused by name."""
    import gguf
    from gguf.quants import dequantize, quantize
    from golden_ptq.io.gguf_file import GGUFFile
    path = tmp_path / "all.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -300)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -70000)
    writer.add_float32("t.f32", 0.125)
    writer.add_uint64("t.u64", 2 ** 40)
    writer.add_int64("t.i64", -(2 ** 40))
    writer.add_float64("t.f64", 1e-300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "Ishmael ✓")
    writer.add_array("t.strings", ["a", "", "ü b"])
    writer.add_array("t.ints", [1, -2, 3])
    writer.add_array("t.floats", [0.5, 1.5])
    tensors = {"f32": rng.randn(3, 5).astype(np.float32), "f16": rng.randn(4, 6).astype(np.float16),
               "cube": rng.randn(2, 3, 4).astype(np.float32)}
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    q8_source = rng.randn(2, 64).astype(np.float32)
    q8 = quantize(q8_source, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("q8", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours, theirs = GGUFFile(str(path)), gguf.GGUFReader(str(path))
    expected = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == expected
    assert ours.metadata["t.strings"] == ["a", "", "ü b"] and ours.metadata["t.u64"] == 2 ** 40
    for tensor in theirs.tensors:
        want = np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32)
        got = ours.get(tensor.name)
        assert got.shape == ours.shape(tensor.name) == tuple(int(d) for d in reversed(tensor.shape))
        np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=tensor.name)
    np.testing.assert_array_equal(ours.get("cube"), tensors["cube"])
    np.testing.assert_allclose(ours.get("q8"), q8_source, atol=0.02)

    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="cut.gguf.*past the end"):
        GGUFFile(str(truncated))


@pytest.mark.parametrize("kind, block_bytes", [("Q4_1", 20), ("Q8_0", 34)])
def test_whole_tensor_dequantizers_give_the_gguf_packages_bits(rng, kind, block_bytes):
    """Random block bytes (float16 scales of every kind, NaN and Inf included) through both."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    from golden_ptq.io.gguf_file import WHOLE_TENSOR_DEQUANTIZERS
    qtype = GGMLQuantizationType[kind]
    raw = rng.randint(0, 256, size=(48, block_bytes * 5)).astype(np.uint8)   # 48 rows of 5 blocks (160 values)
    with np.errstate(invalid="ignore", over="ignore"):
        want = dequantize(raw, qtype).reshape(48, 160)
        got = WHOLE_TENSOR_DEQUANTIZERS[kind](raw).reshape(48, 160)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)   # NaN where the package has NaN
