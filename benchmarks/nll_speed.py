"""Perplexity's log-softmax NLL over one window of SmolLM2-sized logits: numpy (the reference) against
the native kernel (``golden_ptq/kernels/nll.cc``), interleaved; prints milliseconds per window and
the largest relative difference of the two."""
import argparse
import time

import numpy as np

from golden_ptq.eval.perplexity import log_softmax_nll, numpy_log_softmax_nll
from golden_ptq.kernels import kernel_info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--positions", type=int, default=511, help="positions scored per window")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.RandomState(0)
    logits = (rng.randn(args.positions, args.vocab) * 3).astype(np.float32)
    targets = rng.randint(0, args.vocab, args.positions)
    times = {"numpy": [], "native": []}
    routes = {"numpy": numpy_log_softmax_nll, "native": log_softmax_nll}
    for r in range(args.rounds):
        for name in (("numpy", "native") if r % 2 == 0 else ("native", "numpy")):
            start = time.perf_counter()
            routes[name](logits, targets)
            times[name].append(1e3 * (time.perf_counter() - start))
    a, b = numpy_log_softmax_nll(logits, targets), log_softmax_nll(logits, targets)
    info = kernel_info()
    print(f"{args.positions} x {args.vocab} float32 logits; native kernels: "
          f"{info.isa if info.available and info.enabled else 'off'}, threads {info.threads}")
    for name, values in times.items():
        print(f"{name:>6}: {min(values):.1f} ms per window (median {sorted(values)[len(values) // 2]:.1f})")
    print(f"numpy / native: {min(times['numpy']) / min(times['native']):.2f}x; "
          f"largest relative difference {float(np.abs(a - b).max() / np.abs(a).max()):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
