"""Streamed vs in-memory PTQ on the default model (SmolLM2-135M GGUF), every shipped config.

    python benchmarks/streaming_parity.py [--configs a8w8_smooth c8] [--rows 4 --tokens 128]

For each config one fresh process quantizes in memory (load_gguf + PTQ.apply + save_quantized),
another streams (quantize_streamed from the GGUF file); then every tensor of the two folders and
their quant_desc / ptq_config / network / tokenizer files are compared. Prints per config whether
they are bit-identical, and each process's peak RSS and time.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("quant_desc.json", "ptq_config.yaml", "network.yaml", "tokenizer.json", "tokenizer_config.json")

CHILD = r"""
import json, resource, sys, time
import numpy as np
mode, out, config, rows, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
from golden_ptq.config import PTQConfig
from golden_ptq.deploy import packaged_quant_config
from golden_ptq.networks.default_model import default_gguf_path
cfg = PTQConfig.load(packaged_quant_config(config))
rng = np.random.RandomState(0)
data = [rng.randint(0, 49152, size=(1, tokens)) for _ in range(rows)]
start = time.time()
if mode == "stream":
    from golden_ptq.streaming import quantize_streamed
    quantize_streamed(default_gguf_path(), cfg, data, out, progress=False)
else:
    from golden_ptq import PTQ
    from golden_ptq.deploy import save_quantized
    from golden_ptq.networks.loaders import load_gguf
    net, tok = load_gguf(default_gguf_path())
    ptq = PTQ(cfg)
    ptq.apply(net, None, data)
    ptq.convert(net)
    save_quantized(net, ptq, out, tokenizer=tok)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": time.time() - start}))
"""


def run(mode: str, out: str, config: str, rows: int, tokens: int) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", CHILD, mode, out, config, str(rows), str(tokens)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{mode} {config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(memory: str, streamed: str) -> list:
    """Names of the tensors / files that differ (empty: bit-identical)."""
    from golden_ptq.io.safetensors_files import open_safetensors
    a, b = open_safetensors(os.path.join(memory, "model.safetensors")), open_safetensors(streamed)
    differ = sorted(set(a.names()) ^ set(b.names()))
    for name in sorted(set(a.names()) & set(b.names())):
        x, y = a.get(name), b.get(name)
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
            differ.append(name)
    for file in FILES:
        with open(os.path.join(memory, file), "rb") as f1, open(os.path.join(streamed, file), "rb") as f2:
            if f1.read() != f2.read():
                differ.append(file)
    return differ


def main(argv=None) -> int:
    from golden_ptq.deploy import shipped_quant_configs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=shipped_quant_configs())
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="streaming-parity-")
    failures = 0
    try:
        for config in args.configs:
            mem, st = os.path.join(work, "memory"), os.path.join(work, "streamed")
            a = run("memory", mem, config, args.rows, args.tokens)
            b = run("stream", st, config, args.rows, args.tokens)
            differ = compare(mem, st)
            failures += bool(differ)
            verdict = "bit-identical" if not differ else f"DIFFER ({len(differ)}: {', '.join(differ[:3])})"
            print(f"{config:15s} {verdict:15s} memory {a['peak_rss_mb']:6.0f} MB {a['seconds']:6.1f} s | "
                  f"streamed {b['peak_rss_mb']:6.0f} MB {b['seconds']:6.1f} s", flush=True)
            shutil.rmtree(mem, ignore_errors=True)
            shutil.rmtree(st, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
