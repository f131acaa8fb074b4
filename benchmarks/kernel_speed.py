"""Quantized products alone on SmolLM2-135M's Linear shapes: FP32 MatMul vs A16W8 / A16W4 / W8A8.

Each product is ``x [M, K] @ w [N, K].T`` as the quantized Linear dispatches it
(:mod:`golden_ptq.quant_cells.linear_kernels`): ``a16w8`` per-channel int8, ``a16w4_g128``
4-bit asymmetric codes in groups of 128 (576 is not a multiple: the last group holds 64),
``a8w8_static`` (input quantized per tensor) and ``a8w8_dynamic`` (per token), all through the
native kernels when available; ``--route mindspore`` switches the native kernels off (the
MindSpore-op route: a float copy of the weight per call for the group-wise form). FP32 is the
float network's eager product (:func:`golden_ptq.networks.layers.float_matmul`: the process's BLAS
when the native kernels found one, else MindSpore's ``MatMul``). ``--forms`` picks some of them.

Rounds are interleaved (every form of a shape, then the next shape, then the next round), so each
ratio compares calls taken close together; the table gives milliseconds per call, min (median)
over the rounds, and ``×fp32`` = FP32 time / form time (> 1: faster than FP32) from the minima
and from the medians.

    python benchmarks/kernel_speed.py
    python benchmarks/kernel_speed.py --rows 8 --route mindspore --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
from mindspore import Tensor

from golden_ptq import kernels
from golden_ptq.networks.layers import float_matmul
from golden_ptq.quant_cells import linear_kernels

# (name, K, N) of SmolLM2-135M's Linears: q/o, k/v, gate/up, down, the (tied) head.
SHAPES = [("wq/wo", 576, 576), ("wk/wv", 576, 192), ("w1/w3", 576, 1536), ("w2", 1536, 576),
          ("lm_head", 576, 49152)]
GROUP = 128


def make_products(k: int, n: int, rng: np.random.RandomState) -> Dict[str, Tuple[Callable, tuple]]:
    """``{form: (function, operands after x)}`` for one weight shape."""
    w = (rng.randn(n, k) * 0.05).astype(np.float32)
    q8 = rng.randint(-127, 128, (n, k)).astype(np.int8)
    s8 = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    groups = -(-k // GROUP)
    q4 = rng.randint(-8, 8, (n, k)).astype(np.int8)
    s4 = (rng.rand(n, groups) * 0.01 + 1e-3).astype(np.float32)
    z4 = rng.randint(-8, 8, (n, groups)).astype(np.float32)
    input_scale, input_zp = Tensor(np.array([0.02], np.float32)), Tensor(np.array([3.0], np.float32))
    quant_bias = Tensor((-3 * q8.astype(np.int64).sum(axis=1)).astype(np.int32))
    deq_scale = Tensor((0.02 * s8).astype(np.float32))
    return {
        "fp32": (float_matmul, (Tensor(w),)),
        "a16w8": (linear_kernels.w8a16_channel, (Tensor(q8), Tensor(s8))),
        "a16w4_g128": (lambda x, q, s, z: linear_kernels.w8a16_group(x, q, s, z, GROUP),
                       (Tensor(q4), Tensor(s4), Tensor(z4))),
        "a8w8_static": (linear_kernels.a8w8_static, (Tensor(q8), input_scale, input_zp, quant_bias, deq_scale)),
        "a8w8_dynamic": (linear_kernels.a8w8_dynamic, (Tensor(q8), Tensor(s8))),
    }


def time_call(fn: Callable, x: Tensor, args: tuple, budget: float) -> float:
    """Milliseconds per call, averaged over about ``budget`` seconds of calls. PyNative launches are
    asynchronous, so the count is fixed from one waited-for call and the time taken after the last
    result is read."""
    start = time.perf_counter()
    fn(x, *args).asnumpy()
    calls = max(1, min(1000, int(budget / max(time.perf_counter() - start, 1e-6))))
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(x, *args)
    out.asnumpy()
    return (time.perf_counter() - start) / calls * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[1, 8, 512], help="M values")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.15, help="seconds per measurement")
    parser.add_argument("--route", choices=["native", "mindspore"], default="native")
    parser.add_argument("--isa", choices=["amx", "avx512_vnni", "avx2", "portable"], default=None,
                        help="cap the native kernels' instruction set (comparisons on one machine)")
    parser.add_argument("--forms", nargs="*", default=None,
                        help="quantized forms to time beside fp32 (default: all of a16w8 a16w4_g128 a8w8_static "
                             "a8w8_dynamic)")
    parser.add_argument("--head-rows-max", type=int, default=16, help="skip lm_head above this many rows")
    args = parser.parse_args(argv)
    if args.route == "mindspore":
        kernels.set_native_kernels(False)
    elif args.isa:
        kernels.set_kernel_isa(args.isa)
    info = kernels.kernel_info()
    rng = np.random.RandomState(0)
    cases = []
    for name, k, n in SHAPES:
        products = make_products(k, n, rng)
        if args.forms is not None:
            unknown = sorted(set(args.forms) - set(products) - {"fp32"})
            if unknown:
                parser.error(f"--forms: unknown {unknown}; choose from {sorted(set(products) - {'fp32'})}")
            products = {f: p for f, p in products.items() if f == "fp32" or f in args.forms}
        for m in args.rows:
            if name == "lm_head" and m > args.head_rows_max:
                continue
            cases.append((f"{m}x{k}x{n} {name}", Tensor(rng.randn(m, k).astype(np.float32)), products))
    times: Dict[Tuple[str, str], List[float]] = {}
    for _ in range(args.rounds):
        for label, x, products in cases:
            for form, (fn, operands) in products.items():
                times.setdefault((label, form), []).append(time_call(fn, x, operands, args.budget))
    with open("/proc/cpuinfo") as handle:
        flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  CPU flags: {' '.join(shown)}  route: {args.route}  "
          f"native: {info.isa if info.available and info.enabled else 'off'}  threads: {info.threads}  "
          f"rounds: {args.rounds}")
    forms = list(cases[0][2])
    print("ms per call, min (median) over rounds; ×fp32 = FP32 time / form time, from minima (from medians)")
    print("| M×K×N | " + " | ".join(forms) + " |")
    print("|---|" + "---|" * len(forms))
    for label, _, _ in cases:
        base = times[(label, "fp32")]
        cells = []
        for form in forms:
            t = times[(label, form)]
            cell = f"{min(t):.3f} ({statistics.median(t):.3f})"
            if form != "fp32":
                cell += f" {min(base) / min(t):.2f}× ({statistics.median(base) / statistics.median(t):.2f}×)"
            cells.append(cell)
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
