"""SmolLM2 end to end: QUANTIZE -> save -> DEPLOY from the folder alone in a new process -> same perplexity."""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, OutliersSuppressionType, PTQConfig
from golden_ptq.deploy import save_quantized
from golden_ptq.eval.corpus import corpus_split
from golden_ptq.eval.perplexity import perplexity
from golden_ptq.networks.llama import LlamaForCausalLM

pytestmark = pytest.mark.slow
SEQ = 256
I8, SMOOTH = ms.int8, OutliersSuppressionType.SMOOTH
SCHEMES = {  # name -> (config, max perplexity ratio to FP32 on this small slice); C8 rides with a8w8c8
    "a16w8": (dict(), 1.02),
    "a8w8c8_smooth": (dict(act_quant_dtype=I8, kvcache_quant_dtype=I8, outliers_suppression=SMOOTH,
                           opname_blacklist=["w2", "lm_head"]), 1.5),
}

DEPLOY_SCRIPT = r"""
import json, sys
import numpy as np
from golden_ptq.deploy import load_quantized
from golden_ptq.eval.perplexity import perplexity
tokens = np.load(sys.argv[1])
out = {}
for folder in sys.argv[2:]:
    network, _ = load_quantized(folder)  # the folder alone: network.yaml, no float weights read
    out[folder] = perplexity(network, tokens, %d)
print("RESULT " + json.dumps(out))
""" % SEQ


def test_quantize_save_deploy_in_new_process(smollm2_gguf, tmp_path):
    from golden_ptq.networks.loaders import load_gguf
    network, tokenizer = load_gguf(smollm2_gguf, max_position_embeddings=1024)
    weights = {name: p.asnumpy() for name, p in network.parameters_and_names()}
    calib_text, eval_text = corpus_split("calibration"), corpus_split("evaluation")
    calib = np.asarray(tokenizer.encode(calib_text[:6000]))[: 2 * SEQ].reshape(2, SEQ)
    tokens = np.asarray(tokenizer.encode(eval_text[:4000]))[:SEQ]
    np.save(tmp_path / "tokens.npy", tokens)
    fp32 = perplexity(network, tokens, SEQ)
    in_process = {}
    for name, (kwargs, _) in SCHEMES.items():
        net = LlamaForCausalLM.from_arrays(network.config, weights)
        ptq = PTQ(PTQConfig(**kwargs))
        ptq.apply(net, None, [calib])
        ptq.convert(net)
        save_quantized(net, ptq, str(tmp_path / name))
        in_process[str(tmp_path / name)] = perplexity(net, tokens, SEQ)
    proc = subprocess.run([sys.executable, "-c", DEPLOY_SCRIPT, str(tmp_path / "tokens.npy"), *in_process],
                          capture_output=True, text=True, timeout=900, env={**os.environ})
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    deployed = json.loads(lines[0][len("RESULT "):])
    for name, (_, bound) in SCHEMES.items():
        folder = str(tmp_path / name)
        assert deployed[folder] == pytest.approx(in_process[folder], rel=1e-6), name
        assert 1.0 - 0.01 < deployed[folder] / fp32 < bound, (name, deployed[folder], fp32)
        desc = json.loads((tmp_path / name / "quant_desc.json").read_text())
        assert set(desc.values()) - {"FLOAT"}, name
