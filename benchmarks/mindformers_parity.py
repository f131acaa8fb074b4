"""SmolLM2 as a MindFormers model, quantized as MindFormers' network and as golden_ptq's: parity and time.

    python samples/mindformers_llama.py export --output /tmp/mfs/model --seq-length 512
    .venv-mf/bin/python benchmarks/mindformers_parity.py /tmp/mfs/model/run_llama.yaml   # mindformers installed
"""
import sys
import time

import numpy as np

from golden_ptq import PTQ, PTQConfig
from golden_ptq.eval.corpus import corpus_split
from golden_ptq.mindformers import load_mindformers
from golden_ptq.mindformers.helper import MFLlamaHelper
from golden_ptq.mindformers.quant_cells import register_mindformers

run_yaml = sys.argv[1]
helper = MFLlamaHelper(run_yaml)
tokenizer = helper.create_tokenizer()
calib_text, test_text = corpus_split("calibration"), corpus_split("evaluation")
tokens = np.asarray(tokenizer.encode(calib_text[:20000]))
calibration = [tokens[i * 128:(i + 1) * 128] for i in range(4)]
test_tokens = tokenizer.encode(test_text[:8000])
test_ids = np.asarray([test_tokens[:128], test_tokens[128:256]])
reference = load_mindformers(run_yaml)(test_ids).asnumpy()   # float, golden_ptq's network


def perplexity(logits):
    shifted = logits[:, :-1] - logits[:, :-1].max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    target = test_ids[:, 1:]
    return float(np.exp(-np.take_along_axis(logp, target[..., None], -1).mean()))


print(f"float: perplexity {perplexity(reference):.2f} on {test_ids.size} tokens", flush=True)
for name in ("a16w8", "a8w8_dynamic", "a8w8_smooth_c8"):
    config = f"configs/ptq/{name}.yaml"
    times = {}
    for family in ("golden_ptq", "mindformers"):
        start = time.time()
        if family == "golden_ptq":
            network = load_mindformers(run_yaml)
            ptq = PTQ(PTQConfig.load(config))
            ptq.apply(network, None, calibration)
            ptq.convert(network)
            golden = network(test_ids).asnumpy()
        else:
            network = helper.create_network()
            ptq = PTQ(PTQConfig.load(config))
            register_mindformers(ptq.registry)
            ptq.apply(network, helper, calibration)
            ptq.convert(network)
            mf = helper.logits(network, test_ids)
        times[family] = time.time() - start
    scale = np.abs(reference).max()
    print(f"{name}: families differ by max |diff| {np.abs(mf - golden).max() / scale:.2e} (of max |float logit|), "
          f"quantization error golden_ptq {np.abs(golden - reference).max() / scale:.2e}, "
          f"mindformers {np.abs(mf - reference).max() / scale:.2e}; top-1 agreement "
          f"{float((mf.argmax(-1) == golden.argmax(-1)).mean()):.3f}; perplexity golden_ptq {perplexity(golden):.2f}, "
          f"mindformers {perplexity(mf):.2f}; build+calibrate+forward golden_ptq {times['golden_ptq']:.1f} s, "
          f"mindformers {times['mindformers']:.1f} s", flush=True)
