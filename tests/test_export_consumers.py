"""Exports loaded by the real consumer libraries on CPU (the ``export-check`` extra): transformers with
compressed-tensors, and transformers' GGUF loader. Logits are compared with golden_ptq's DEPLOY model."""
import numpy as np
import pytest

from export_models import TEST_IDS, export_config, quantize_tiny, rel_error, smollm2_tokenizer
from golden_ptq.export import SavedModel, export_model

REASON = "optional dependency {} is not installed (pip install -e '.[export-check]'; see .ci/install_export_check.sh)"
torch = pytest.importorskip("torch", reason=REASON.format("torch"))
transformers = pytest.importorskip("transformers", reason=REASON.format("transformers"))

G32 = dict(weight_quant_granularity="PER_GROUP", group_size=32)
# scheme -> (PTQConfig fields, bound on the relative logit difference). Static W8A8 and weight-only
# compute what we compute (float rounding only); dynamic per-token inputs use compressed-tensors'
# scale absmax/127.5 where ours is absmax/127.
CT_SCHEMES = {
    "a16w8": (dict(), 1e-5),
    "a16w8_g32_asym": (dict(weight_symmetric=False, **G32), 1e-5),
    "w4a16_g32": (dict(weight_bits=4, **G32), 1e-5),
    "a8w8_smooth": (dict(act_quant_dtype="int8", outliers_suppression="SMOOTH", opname_blacklist=["w2"]), 1e-5),
    "a8w8_dynamic": (dict(act_quant_dtype="int8", act_quant_granularity="PER_TOKEN"), 3e-2),
    # an offline rotation is other float weights (norms folded, head untied, int8 embedding rows)
    "a8w8_smooth_rotated": (dict(act_quant_dtype="int8", outliers_suppression="SMOOTH", opname_blacklist=["w2"],
                                 embedding_quant_dtype="int8", rotation="hadamard",
                                 algo_args={"rotation_online": False}), 1e-5),
}


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


@pytest.mark.parametrize("scheme", sorted(CT_SCHEMES))
def test_transformers_runs_the_compressed_tensors_export(tmp_path, tiny_config, scheme):
    pytest.importorskip("compressed_tensors", reason=REASON.format("compressed-tensors"))
    kwargs, bound = CT_SCHEMES[scheme]
    _, logits = quantize_tiny(tmp_path / "q", export_config(tiny_config), **kwargs)
    export_model(str(tmp_path / "q"), "compressed-tensors", str(tmp_path / "ct"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ct"))
    error = rel_error(hf_logits(model, TEST_IDS), logits)
    assert error < bound, error
    if scheme == "a16w8":  # the weight transformers multiplies by is ours
        ours = SavedModel(str(tmp_path / "q")).linear("model.layers.0.feed_forward.w3").dequantized_weight()
        np.testing.assert_allclose(model.model.layers[0].mlp.up_proj.weight.detach().numpy(), ours, rtol=1e-6)


def test_transformers_gguf_loader_reads_q8_0(tmp_path, tiny_config, smollm2_gguf):
    pytest.importorskip("gguf", reason=REASON.format("gguf"))
    tokenizer = smollm2_tokenizer(smollm2_gguf)
    config = export_config(tiny_config, tokenizer)
    deployed, _ = quantize_tiny(tmp_path / "q", config, tokenizer, **G32)
    export_model(str(tmp_path / "q"), "gguf", str(tmp_path / "g"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "g"), gguf_file="model.gguf",
                                                              dtype=torch.float32)
    saved = SavedModel(str(tmp_path / "q"))
    for ours, module in (("model.layers.0.attention.wq", model.model.layers[0].self_attn.q_proj),
                         ("model.layers.1.feed_forward.w2", model.model.layers[1].mlp.down_proj), ("lm_head", model.lm_head)):
        layer = saved.linear(ours)
        n, k = layer.weight.shape
        expected = (layer.weight.reshape(n, k // 32, 32).astype(np.float32)
                    * layer.tensors["weight_scale"].astype(np.float16).astype(np.float32)[:, :, None]).reshape(n, k)
        np.testing.assert_array_equal(module.weight.detach().numpy(), expected)  # our codes x fp16(our scales)
    text = "Call me Ishmael. Some years ago, 1851"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "g"), gguf_file="model.gguf")
    assert hf_tokenizer.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    ids = np.asarray([tokenizer.encode(text)])
    error = rel_error(hf_logits(model, ids), deployed(ids).asnumpy())
    assert 0 < error < 1e-3, error  # the fp16 rounding of the scales
