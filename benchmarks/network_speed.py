"""FP32 speed and memory of SmolLM2 on this CPU: prefill tokens/s, decode tokens/s, peak RSS.

    python benchmarks/network_speed.py                       # eager elementwise blocks (the default)
    python benchmarks/network_speed.py --compile-elementwise # graph-compiled blocks
(benchmarks/speed.py compares every deploy form, compiled decoding included.)
"""
import argparse
import json
import resource
import time

import numpy as np
import psutil

from golden_ptq.networks import layers
from golden_ptq.networks.default_model import default_gguf_path
from golden_ptq.networks.loaders import load_gguf


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-elementwise", action="store_true", help="graph-compile the elementwise blocks")
    args = parser.parse_args(argv)
    layers.set_compile_elementwise(args.compile_elementwise)
    start = time.time()
    network, _ = load_gguf(default_gguf_path(), max_position_embeddings=2048)
    load_s = time.time() - start
    rss_loaded = psutil.Process().memory_info().rss / 1e9
    ids = np.random.RandomState(0).randint(0, network.config.vocab_size, (1, args.prefill))
    network.prefill(ids).asnumpy()  # warm-up (and compile, when enabled)
    times = []
    for _ in range(args.repeats):
        start = time.time()
        network.prefill(ids).asnumpy()
        times.append(time.time() - start)
    prefill_s = min(times)
    token = np.array([1])
    network.decode_step(token).asnumpy()
    start = time.time()
    for _ in range(args.decode):
        network.decode_step(token).asnumpy()
    decode_s = (time.time() - start) / args.decode
    print(json.dumps({
        "mode": "compiled" if layers.COMPILE else "eager (PyNative)",
        "load_s": round(load_s, 1), "rss_after_load_gb": round(rss_loaded, 2),
        "prefill_tokens": args.prefill, "prefill_s": round(prefill_s, 2),
        "prefill_tokens_per_s": round(args.prefill / prefill_s, 1),
        "decode_tokens_per_s": round(1.0 / decode_s, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}))


if __name__ == "__main__":
    main()
