"""One msrun worker of test_tp_msrun.py: float logits, quantize + save per rank, DEPLOY from both forms.

    msrun --worker_num=2 ... python tests/tp/tp_worker.py WORKDIR

WORKDIR holds ``job.json`` (network config dict, PTQConfig kwargs, the TP=1 full quantized folder)
and ``calib.npy`` / ``ids.npy``; this worker writes ``<what>_rank<r>.npy`` there and the per-rank
checkpoints under ``WORKDIR/tp2``; for each of ``job["variants"]`` its float and quantized logits and
``<name>_tuning_rank<r>.json`` (rolled-back layers, range_parms, output errors).
"""
import json
import os
import sys

import numpy as np


def main(workdir: str) -> None:
    from golden_ptq import PTQ, PTQConfig
    from golden_ptq.deploy import load_quantized, save_quantized
    from golden_ptq.networks.helper import NetworkHelper
    from golden_ptq.parallel import barrier, init_from_launcher

    ctx = init_from_launcher()
    if ctx.size != 2:
        raise SystemExit(f"tp_worker: expected 2 ranks, got {ctx.size}")
    with open(os.path.join(workdir, "job.json"), encoding="utf-8") as handle:
        job = json.load(handle)
    ids = np.load(os.path.join(workdir, "ids.npy"))
    calib = list(np.load(os.path.join(workdir, "calib.npy")))

    def save(what: str, logits) -> None:
        np.save(os.path.join(workdir, f"{what}_rank{ctx.rank}.npy"), logits.asnumpy())

    def save_compiled(what: str, net) -> None:
        """Eager and compiled forward logits and greedy tokens; the compiled run must use its graphs."""
        net.set_compiled(decode=False, forward=False)
        eager, eager_tokens = net(ids).asnumpy(), np.asarray(net.generate(ids, max_length=ids.shape[1] + 6))
        net.set_compiled(decode=True, forward=True)
        net.compile_min_new_tokens = 1
        compiled, tokens = net(ids).asnumpy(), np.asarray(net.generate(ids, max_length=ids.shape[1] + 6))
        ran = bool(net.compiled_forward and net._decode_shapes)   # False after a fallback to PyNative
        net.set_compiled()
        np.savez(os.path.join(workdir, f"{what}_compiled_rank{ctx.rank}.npz"), eager=eager, compiled=compiled,
                 eager_tokens=eager_tokens, tokens=tokens, ran=ran)

    helper = NetworkHelper(job["network"])
    network = helper.create_network()
    save("fp", network(ids))
    ptq = PTQ(PTQConfig.from_dict(job["ptq"]))
    ptq.apply(network, helper, calib)
    ptq.convert(network)
    save("quant", network(ids))
    save_quantized(network, ptq, os.path.join(workdir, "tp2"))
    barrier(ctx)
    deployed, _ = load_quantized(os.path.join(workdir, "tp2"), helper)
    save("deploy_ranks", deployed(ids))
    save_compiled("deploy_ranks", deployed)
    deployed, _ = load_quantized(job["full_folder"], helper)
    save("deploy_full", deployed(ids))
    # more networks and PTQ settings (uneven query heads, replicated KV heads, searched smoothing,
    # histogram observers, rollback, dynamic per-token activations): logits and tuning results
    for variant in job["variants"]:
        net = NetworkHelper(variant["network"]).create_network()
        save(f"{variant['name']}_fp", net(ids))
        ptq = PTQ(PTQConfig.from_dict(variant["ptq"]), measure_sensitivity=True)
        ptq.apply(net, None, calib)
        ptq.convert(net)
        save(f"{variant['name']}_quant", net(ids))
        if variant.get("compiled"):
            save_compiled(f"{variant['name']}_quant", net)
        with open(os.path.join(workdir, f"{variant['name']}_tuning_rank{ctx.rank}.json"), "w", encoding="utf-8") as f:
            json.dump({"rolled_back": ptq.rolled_back, "range_parms": ptq.range_parms,
                       "output_errors": ptq.output_errors}, f)
    barrier(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
