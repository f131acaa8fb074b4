"""What golden_ptq's native float kernels buy the FP32 network: SmolLM2-135M with them and without.

The native float operators (``golden_ptq/kernels/float_prefill.cc``: RMSNorm, rope, causal
attention, SwiGLU, the residual additions; ``kv_attention.cc``: decode attention over the float
cache) against MindSpore's ops for the same steps (``set_native_kernels(False)``). Two networks with
the same weights in one process, each bound to its route when its decode graph compiles; the eager
prefill follows the switch, set before every call. Columns as ``benchmarks/speed.py`` (prefill
tokens/s at 1 x 512 and 4 x 512, compiled decode at batch 1 and 8), interleaved and the order
reversed every other round; best and median of the rounds, and native / ops.

``--switch blas`` compares instead the eager float products through the process's BLAS
(``blas_gemm.cc``) against MindSpore's MatMul, every other native kernel on in both
(``set_blas_gemm``); compiled decode steps use MindSpore's MatMul on both routes.

    python benchmarks/native_float_kernels.py --repeats 4
    python benchmarks/native_float_kernels.py --switch blas --repeats 4
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from golden_ptq.kernels import kernel_info, set_blas_gemm, set_native_kernels
from golden_ptq.networks.default_model import default_gguf_path
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders import load_gguf
from speed import COLUMNS, GoldenRunner, cpu_flags, interleaved_rounds, measure


# --switch: (the switch, the label of its off route, of its on route)
SWITCHES = {"native": (set_native_kernels, "MindSpore ops", "native"),
            "blas": (set_blas_gemm, "MindSpore MatMul", "BLAS")}


class SwitchedRunner:
    """A :class:`speed.GoldenRunner` that sets its switch before each call."""

    def __init__(self, network, switch, on: bool):
        self.switch, self.on = switch, on
        switch(on)
        self.inner = GoldenRunner(network, compiled=True, compiled_forward=False)

    def prefill(self, ids: np.ndarray) -> None:
        self.switch(self.on)
        self.inner.prefill(ids)

    def decode(self, ids: np.ndarray, steps: int) -> float:
        self.switch(self.on)
        return self.inner.decode(ids, steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--switch", choices=sorted(SWITCHES), default="native")
    args = parser.parse_args(argv)
    switch, off_name, on_name = SWITCHES[args.switch]
    info = kernel_info()
    if not info.available:
        raise SystemExit(f"native_float_kernels: nothing to compare, {info.reason}")
    start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    network, _ = load_gguf(default_gguf_path(), max_position_embeddings=2048)
    weights = {name: p.asnumpy() for name, p in network.parameters_and_names()}
    twin = LlamaForCausalLM.from_arrays(network.config, weights)
    vocab = network.config.vocab_size
    runners = {}
    for name, net, on in ((off_name, twin, False), (on_name, network, True)):
        runners[name] = SwitchedRunner(net, switch, on)
        measure(runners[name], np.random.RandomState(0), vocab, 2)   # compile its graphs on its route
    samples = interleaved_rounds(runners, args.repeats, vocab, args.decode_steps)
    switch(True)
    print(f"\nSmolLM2-135M FP32, {start}, {args.repeats} rounds; CPU flags: {cpu_flags()}")
    print("| route | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    best = {name: {c: max(r[c] for r in rows) for c in COLUMNS} for name, rows in samples.items()}
    for name, rows in samples.items():
        cells = [f"{best[name][c]:.1f} ({statistics.median(r[c] for r in rows):.1f})" for c in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    ratios = [f"{best[on_name][c] / best[off_name][c]:.2f}x" for c in COLUMNS]
    print(f"| {on_name} / {off_name} (best) | " + " | ".join(ratios) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
