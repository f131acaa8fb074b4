"""Peak RSS of streamed vs in-memory PTQ as the number of decoder layers grows.

    python benchmarks/streaming_memory.py --layers 4 16 --hidden 512 --config a8w8_dynamic

For each layer count it writes a random bf16 Hugging Face folder (one shard per layer), then
quantizes it in a fresh process per path (streamed with ``quantize_streamed``; in memory with
``load_hf`` + ``PTQ.apply`` + ``save_quantized``) and reports that process's peak RSS. Streamed
peaks should stay flat in the layer count; in-memory peaks grow by about a float layer and its
int8 copy per layer. ``--json`` prints one JSON line per run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write_random_hf(folder: str, layers: int, hidden: int, inter: int, heads: int, vocab: int, seed: int = 0) -> None:
    """A random Llama in HF layout (bf16, one shard per decoder layer), written layer by layer."""
    from golden_ptq.io.sharded_writer import ShardedSafetensorsWriter, bfloat16_bits
    from golden_ptq.io.tensor_names import HF_GLOBAL, HF_PER_LAYER
    os.makedirs(folder, exist_ok=True)
    cfg = {"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": heads, "intermediate_size": inter,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 1024,
           "tie_word_embeddings": False}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(cfg, handle)
    rng = np.random.RandomState(seed)
    shapes = {"attention_norm.weight": (hidden,), "ffn_norm.weight": (hidden,),
              "attention.wq.weight": (hidden, hidden), "attention.wk.weight": (hidden, hidden),
              "attention.wv.weight": (hidden, hidden), "attention.wo.weight": (hidden, hidden),
              "feed_forward.w1.weight": (inter, hidden), "feed_forward.w2.weight": (hidden, inter),
              "feed_forward.w3.weight": (inter, hidden)}
    writer = ShardedSafetensorsWriter(folder)

    def draw(name, shape):
        base = 1.0 if name.endswith("norm.weight") else 0.0
        return bfloat16_bits((base + 0.02 * rng.standard_normal(shape)).astype(np.float32))

    for i in range(layers):
        arrays = {HF_PER_LAYER[k].format(i=i): draw(k, s) for k, s in shapes.items()}
        writer.write_shard(arrays, {k: "BF16" for k in arrays})
    rest = {HF_GLOBAL["model.tok_embeddings.embedding_weight"]: draw("embed", (vocab, hidden)),
            HF_GLOBAL["model.norm_out.weight"]: draw("norm.weight", (hidden,)),
            HF_GLOBAL["lm_head.weight"]: draw("head", (vocab, hidden))}
    writer.write_shard(rest, {k: "BF16" for k in rest})
    writer.finish()


CHILD = r"""
import json, resource, sys, time
import numpy as np
mode, src, out, config, tokens, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
from golden_ptq.config import PTQConfig
from golden_ptq.deploy import packaged_quant_config
cfg = PTQConfig() if config == "default" else PTQConfig.load(packaged_quant_config(config))
rng = np.random.RandomState(0)
data = [rng.randint(0, 1000, size=(1, tokens)) for _ in range(rows)]
start = time.time()
if mode == "stream":
    from golden_ptq.streaming import quantize_streamed
    quantize_streamed(src, cfg, data, out, progress=False)
else:
    from golden_ptq import PTQ
    from golden_ptq.deploy import save_quantized
    from golden_ptq.networks.loaders.hf_loader import load_hf
    net = load_hf(src)
    ptq = PTQ(cfg)
    ptq.apply(net, None, data)
    ptq.convert(net)
    save_quantized(net, ptq, out)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": time.time() - start}))
"""


def measure(mode: str, src: str, out: str, config: str, tokens: int, rows: int) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", CHILD, mode, src, out, config, str(tokens), str(rows)],
                          env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--config", default="a8w8_dynamic", help="a shipped config, or 'default' (PTQConfig(): W8A16)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per calibration row")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=["stream", "memory"], choices=["stream", "memory"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="streaming-memory-")
    try:
        for layers in args.layers:
            src = os.path.join(work, f"src{layers}")
            write_random_hf(src, layers, args.hidden, args.intermediate, args.heads, args.vocab)
            for mode in args.modes:
                result = measure(mode, src, os.path.join(work, f"out-{mode}-{layers}"), args.config, args.tokens,
                                 args.rows)
                result.update(mode=mode, layers=layers, hidden=args.hidden, config=args.config)
                print(json.dumps(result) if args.json else
                      f"{mode:6s} {layers:3d} layers: peak RSS {result['peak_rss_mb']:7.0f} MB, {result['seconds']:.1f} s")
                shutil.rmtree(os.path.join(work, f"out-{mode}-{layers}"), ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
