"""Tiny quantized folders for the export tests: a random network, a few calibration rows, saved as quantize does."""
import numpy as np

from golden_ptq import PTQ, PTQConfig
from golden_ptq.deploy import load_quantized, save_quantized
from golden_ptq.networks.llama import LlamaForCausalLM

TEST_IDS = np.random.RandomState(9).randint(0, 97, (2, 16))


def smollm2_tokenizer(gguf_path):
    from golden_ptq.io.gguf_file import GGUFFile
    from golden_ptq.networks.tokenizer import Tokenizer
    return Tokenizer.from_gguf_metadata(GGUFFile(gguf_path).metadata)


def export_config(tiny_config, tokenizer=None, tie=False):
    """The tiny config with the tokenizer's vocabulary (a GGUF/transformers tokenizer must fit the model)."""
    if tokenizer is not None:
        tiny_config.vocab_size = tokenizer.vocab_size
        tiny_config.bos_token_id, tiny_config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    tiny_config.tie_word_embeddings = tie
    return tiny_config


def quantize_tiny(folder, config, tokenizer=None, **ptq_kwargs):
    """Save a quantized random network to ``folder``; returns its DEPLOY reload (network, logits on TEST_IDS)."""
    net = LlamaForCausalLM(config, seed=0)
    ptq = PTQ(PTQConfig(**ptq_kwargs))
    rng = np.random.RandomState(0)
    ptq.apply(net, None, [rng.randint(0, config.vocab_size, (2, 24)) for _ in range(2)])
    ptq.convert(net)
    save_quantized(net, ptq, str(folder), tokenizer=tokenizer)
    deployed, _ = load_quantized(str(folder))
    return deployed, deployed(TEST_IDS).asnumpy()


def rel_error(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())
