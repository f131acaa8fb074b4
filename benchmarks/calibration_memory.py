"""Peak memory of layer-wise calibration on SmolLM2, in a fresh process.

    python benchmarks/calibration_memory.py --quant-config configs/ptq/a8w8_smooth_c8.yaml
    python benchmarks/calibration_memory.py --quant-config configs/ptq/a8w8_static.yaml \
        --set anti_method=m2 --set act_method=3 --set precision_recovery=NONE
    python benchmarks/calibration_memory.py --quant-config configs/ptq/a8w8_static.yaml --measure-sensitivity

``--set field=value`` overrides one PTQConfig field (yaml syntax for the value), so every method
can be measured on the same base config and the same calibration data, one process per run.

Prints the resident memory after loading the float model, the peak during calibration, and the
size of the cached per-layer activations (calibration tokens x hidden size x 4 bytes x 2: the
inputs of the current layer and its outputs).
"""
import argparse
import json
import resource
import threading
import time

import psutil
import yaml

from golden_ptq import PTQ, PTQConfig
from golden_ptq.eval.corpus import corpus_windows
from golden_ptq.networks.default_model import default_gguf_path
from golden_ptq.networks.loaders import load_gguf


class PeakSampler(threading.Thread):
    """Samples this process's RSS every 50 ms (ru_maxrss cannot be reset between phases)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, False

    def run(self):
        proc = psutil.Process()
        while not self.stop:
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.05)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quant-config", default="configs/ptq/a8w8_smooth_c8.yaml")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--seq-length", type=int, default=512)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one PTQConfig field of --quant-config (repeatable)")
    parser.add_argument("--measure-sensitivity", action="store_true",
                        help="PTQ(config, measure_sensitivity=True)")
    args = parser.parse_args(argv)
    values = PTQConfig.load(args.quant_config).to_dict()
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or key not in values:
            parser.error(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(values)}")
        values[key] = yaml.safe_load(text)
    config = PTQConfig.from_dict(values)
    network, tokenizer = load_gguf(default_gguf_path(), max_position_embeddings=2048)
    float_bytes = sum(p.asnumpy().nbytes for _, p in network.parameters_and_names())
    seq = args.seq_length
    calib = list(corpus_windows(tokenizer, "calibration", seq, args.calib_samples))
    rss_loaded = psutil.Process().memory_info().rss
    sampler = PeakSampler()
    sampler.start()
    ptq = PTQ(config, measure_sensitivity=args.measure_sensitivity)
    ptq.apply(network, None, calib)
    ptq.convert(network)
    sampler.stop = True
    sampler.join()
    hidden = network.config.hidden_size
    print(json.dumps({
        "quant_config": args.quant_config, "overrides": args.set, "measure_sensitivity": args.measure_sensitivity,
        "calibration_tokens": ptq.calibration_tokens,
        "calibration_s": round(ptq.calibration_seconds, 1),
        "float_parameters_gb": round(float_bytes / 1e9, 3),
        "rss_after_load_gb": round(rss_loaded / 1e9, 2),
        "peak_rss_during_calibration_gb": round(sampler.peak / 1e9, 2),
        "calibration_over_loaded_gb": round((sampler.peak - rss_loaded) / 1e9, 2),
        "cached_layer_activations_gb": round(2 * ptq.calibration_tokens * hidden * 4 / 1e9, 3),
        "process_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}))


if __name__ == "__main__":
    main()
