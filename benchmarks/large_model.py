"""A Llama-2-7B-shaped model on this machine: write it, quantize it W8A8, DEPLOY it, TP=2 under msrun.

    python benchmarks/large_model.py --layers 2 --json                  # CI-sized: 2 decoder layers
    python benchmarks/large_model.py --json                             # the full 32 layers (13.4 GB bf16)
    python benchmarks/large_model.py --synthetic-quantized --steps deploy --json  # DEPLOY a synthetic int8 folder
    python benchmarks/large_model.py --float default --steps static,deploy,tp2 --json  # the same steps on SmolLM2

Steps (``--steps``, comma separated; default all):

* ``write``: a synthetic Llama-2-7B-shaped float folder in Hugging Face layout (``config.json``, the
  SmolLM2 tokenizer, bf16 ``model-0000i-of-0000N.safetensors`` + index, one shard per decoder layer,
  written one at a time). Random weights scaled so activations stay finite through 32 layers
  (residual branches shrink with depth), with planted outlier channels in the norms (smoothing's work).
* ``static`` / ``dynamic``: W8A8 quantization in a child process, per-tensor static inputs with
  SmoothQuant (``a8w8_smooth.yaml``) and per-token dynamic inputs (``a8w8_dynamic.yaml`` without GPTQ,
  for time), on 8 x 512 calibration tokens of the packaged corpus. Through the streaming quantizer
  (``golden_ptq.streaming.quantize_streamed``); ``--in-memory-quantize`` uses the in-memory path
  (NetworkHelper + PTQ + save_quantized) instead, for models that fit.
* ``deploy``: ``load_quantized`` + greedy generation in a child process, from the static result (or
  with ``--synthetic-quantized`` from a folder of random int8 codes and scales written directly in the
  DEPLOY layout -- no calibration, so its tokens mean nothing; it measures memory and speed only).
* ``tp2``: static quantization streamed under ``msrun`` with 2 workers, each writing its own shards
  to ``rank_0/`` / ``rank_1/`` (``--tp-source quantize``, the default), then those per-rank folders
  DEPLOYed under ``msrun``; or the TP=1 result split per rank (``split``), or the full folder, each rank
  slicing it tensor by tensor while loading (``full``). Rank 0's logits and tokens are compared with
  the TP=1 ``deploy`` step's.

Each step's peak RSS is that child process's own (``os.wait4``; under msrun each worker reports its
``ru_maxrss``). ``--json`` ends the output with one JSON line. Big files live in ``--workdir`` (default a
new folder under /tmp) and are deleted at the end unless ``--keep``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
SHAPE = dict(hidden_size=4096, num_heads=32, num_kv_heads=32, intermediate_size=11008, vocab_size=49152,
             max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0)
STEPS = ("write", "static", "dynamic", "deploy", "tp2")
PROMPT = "Call me Ishmael. Some years ago"
OUTLIERS = 8          # planted outlier channels per norm
OUTLIER_GAIN = 20.0   # their norm weight


# ----- float folder -------------------------------------------------------------------------------
def write_float_folder(folder: str, layers: int, seed: int = 0) -> dict:
    """The synthetic bf16 HF folder (see the module docstring), shard by shard; returns sizes and time."""
    from golden_ptq.deploy import default_network_config
    from golden_ptq.io.folder_set import write_folder_set
    from golden_ptq.io.sharded_writer import ShardedSafetensorsWriter, bfloat16_bits
    from golden_ptq.io.tensor_names import HF_GLOBAL, HF_PER_LAYER
    from golden_ptq.networks.helper import NetworkHelper

    hidden, ffn, vocab = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    rng = np.random.default_rng(seed)
    branch = 1.0 / np.sqrt(2.0 * layers)   # residual branches: the stream's variance grows ~ linearly, not faster

    def normal(shape, std):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    def norm_weight():
        weight = 1.0 + 0.05 * rng.standard_normal(hidden, dtype=np.float32)
        weight[rng.choice(hidden, OUTLIERS, replace=False)] *= OUTLIER_GAIN
        return weight

    def bf16(arrays):
        return {k: bfloat16_bits(v) for k, v in arrays.items()}, {k: "BF16" for k in arrays}

    start = time.time()

    def fill(tmp: str) -> None:
        writer = ShardedSafetensorsWriter(tmp)
        for i in range(layers):
            names = {ours: theirs.format(i=i) for ours, theirs in HF_PER_LAYER.items() if "bias" not in ours}
            arrays = {
                names["attention_norm.weight"]: norm_weight(), names["ffn_norm.weight"]: norm_weight(),
                names["attention.wq.weight"]: normal((hidden, hidden), 1 / np.sqrt(hidden)),
                names["attention.wk.weight"]: normal((hidden, hidden), 1 / np.sqrt(hidden)),
                names["attention.wv.weight"]: normal((hidden, hidden), 1 / np.sqrt(hidden)),
                names["attention.wo.weight"]: normal((hidden, hidden), branch / np.sqrt(hidden)),
                names["feed_forward.w1.weight"]: normal((ffn, hidden), 1 / np.sqrt(hidden)),
                names["feed_forward.w3.weight"]: normal((ffn, hidden), 1 / np.sqrt(hidden)),
                names["feed_forward.w2.weight"]: normal((hidden, ffn), branch / np.sqrt(ffn)),
            }
            writer.write_shard(*bf16(arrays))
            del arrays
        writer.write_shard(*bf16({HF_GLOBAL["model.tok_embeddings.embedding_weight"]: normal((vocab, hidden), 1.0)}))
        writer.write_shard(*bf16({HF_GLOBAL["model.norm_out.weight"]: np.ones(hidden, np.float32),
                                  HF_GLOBAL["lm_head.weight"]: normal((vocab, hidden), 1 / np.sqrt(hidden))}))
        writer.finish()
        config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16",
                  "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
                  "num_attention_heads": SHAPE["num_heads"], "num_key_value_heads": SHAPE["num_kv_heads"],
                  "intermediate_size": ffn, "max_position_embeddings": SHAPE["max_position_embeddings"],
                  "rms_norm_eps": SHAPE["rms_norm_eps"], "rope_theta": SHAPE["rope_theta"],
                  "tie_word_embeddings": False, "hidden_act": "silu"}
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=1)
        NetworkHelper(default_network_config()).create_tokenizer().save(tmp)

    write_folder_set(folder, fill)
    return {"write_s": round(time.time() - start, 1), "float_bytes": folder_bytes(folder)}


# ----- synthetic quantized folder -----------------------------------------------------------------
def quant_config(kind: str):
    """The PTQConfig of a step: ``static`` a8w8_smooth with w2 quantized too (the shipped config keeps
    w2 float, 5.8 GB at this shape), ``dynamic`` a8w8_dynamic without GPTQ."""
    import dataclasses
    from golden_ptq.config import PTQConfig
    from golden_ptq.deploy import packaged_quant_config
    if kind == "static":
        config = PTQConfig.load(packaged_quant_config("a8w8_smooth"))
        return dataclasses.replace(config, opname_blacklist=["lm_head"])
    config = PTQConfig.load(packaged_quant_config("a8w8_dynamic"))
    from golden_ptq.config.enums import PrecisionRecovery
    return dataclasses.replace(config, precision_recovery=PrecisionRecovery.NONE)


def write_synthetic_quantized(folder: str, layers: int, kind: str = "static", seed: int = 0) -> dict:
    """A quantized folder of random int8 codes and plausible scales in exactly the DEPLOY layout (the
    names, dtypes and shapes a DEPLOY network declares, from the layout table), one shard per layer.
    For memory and speed of DEPLOY only: nothing was calibrated."""
    import dataclasses
    from golden_ptq import PTQ
    from golden_ptq.config import PTQMode
    from golden_ptq.config.model_config import LlamaConfig
    from golden_ptq.deploy import CONFIG_FILE, DESC_FILE, NETWORK_FILE, default_network_config, write_network_yaml
    from golden_ptq.io.checkpoint import quant_desc
    from golden_ptq.io.folder_set import write_folder_set
    from golden_ptq.io.sharded_writer import ShardedSafetensorsWriter
    from golden_ptq.networks.helper import NetworkHelper
    from golden_ptq.networks.llama import LlamaForCausalLM

    config = LlamaConfig(num_layers=layers, tie_word_embeddings=False, **SHAPE)
    ptq_config = dataclasses.replace(quant_config(kind), mode=PTQMode.DEPLOY)
    network = LlamaForCausalLM(config)                 # placeholders only: nothing allocated
    ptq = PTQ(ptq_config)
    ptq.apply(network)
    declared = {name: (tuple(p.shape), str(p.dtype)) for name, p in network.parameters_and_names()}
    rng = np.random.default_rng(seed)
    input_scale, code_std = 4.0 / 127, 127 / np.sqrt(3)   # inputs ~ N(0, 1) after the norm; uniform codes

    def value(name, shape, dtype):
        local = name.rsplit(".", 1)[1]
        fan_in = shape[1] if len(shape) == 2 else SHAPE["hidden_size"]
        weight_std = (1 / np.sqrt(2.0 * layers) if ("wo." in name or "w2." in name) else 1.0) / np.sqrt(fan_in)
        if dtype == "Int8":
            return rng.integers(-127, 128, size=shape, dtype=np.int8)
        if local in ("weight_scale", "deq_scale"):
            scale = np.full(shape, weight_std / code_std, np.float32)
            return scale * np.float32(input_scale) if local == "deq_scale" else scale
        if local == "input_scale":
            return np.full(shape, input_scale, np.float32)
        if dtype == "Int32" or local in ("input_zp", "weight_zp"):
            return np.zeros(shape, np.int32 if dtype == "Int32" else np.float32)
        if name.endswith("norm.weight") or name.endswith("norm_out.weight"):
            return np.ones(shape, np.float32)
        std = 1.0 if "embedding" in name else weight_std
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    start = time.time()

    def fill(tmp: str) -> None:
        writer = ShardedSafetensorsWriter(tmp)
        groups = {}
        for name in declared:
            key = int(name.split(".")[2]) if name.startswith("model.layers.") else layers
            groups.setdefault(key, []).append(name)
        for key in sorted(groups):
            writer.write_shard({name: value(name, *declared[name]) for name in groups[key]})
        writer.finish({"synthetic": "random int8 codes and scales; not calibrated"})
        with open(os.path.join(tmp, DESC_FILE), "w", encoding="utf-8") as handle:
            json.dump(quant_desc(network), handle, indent=1, sort_keys=True)
        ptq_config.dump(os.path.join(tmp, CONFIG_FILE))
        write_network_yaml(os.path.join(tmp, NETWORK_FILE), network, None, True)
        NetworkHelper(default_network_config()).create_tokenizer().save(tmp)

    write_folder_set(folder, fill)
    return {"write_s": round(time.time() - start, 1), "output_bytes": folder_bytes(folder), "synthetic": True}


# ----- quantize -----------------------------------------------------------------------------------
def calibration_rows(folder: str, samples: int, length: int):
    from golden_ptq.eval.corpus import corpus_windows
    from golden_ptq.streaming.float_source import open_float_source
    windows = corpus_windows(open_float_source(folder).tokenizer(), "calibration", length, samples)
    return [np.asarray(window)[None] for window in windows]


def quantize(float_folder: str, output: str, kind: str, samples: int, length: int, in_memory: bool,
             batch: int = 1) -> dict:
    if not in_memory:
        try:
            from golden_ptq.streaming import quantize_streamed
        except ImportError as err:
            return {"available": False, "reason": f"streaming quantize not available ({err})"}
    config = quant_config(kind)
    rows = calibration_rows(float_folder, samples, length)
    start = time.time()
    if not in_memory:
        result = quantize_streamed(float_folder, config, rows, output, progress=True, calib_batch_size=batch)
        summary = result.summary() if hasattr(result, "summary") else None
        path = "streamed"
    else:
        from golden_ptq import PTQ
        from golden_ptq.deploy import save_quantized
        from golden_ptq.networks.helper import NetworkHelper
        source = "gguf" if float_folder.endswith(".gguf") else "hf"
        helper = NetworkHelper({"model": {"source": source, "path": float_folder}})
        network = helper.create_network()
        ptq = PTQ(config, calib_batch_size=batch)
        ptq.apply(network, helper, rows)
        ptq.convert(network)
        save_quantized(network, ptq, output, tokenizer=helper.create_tokenizer())
        summary = ptq.summary() if hasattr(ptq, "summary") else None
        path = "in-memory"
    seconds = time.time() - start
    from golden_ptq.streaming.float_source import open_float_source
    layers = open_float_source(float_folder).config.num_layers
    return {"available": True, "path": path, "calib_batch_size": batch, "quantize_s": round(seconds, 1),
            "quantize_s_per_layer": round(seconds / layers, 1), "output_bytes": folder_bytes(output),
            "calibration_tokens": sum(int(r.size) for r in rows), "summary": str(summary)[:2000] if summary else None}


# ----- deploy -------------------------------------------------------------------------------------
def deploy(folder: str, new_tokens: int, logits_path: str) -> dict:
    from golden_ptq.deploy import build_network
    from golden_ptq.parallel import current_context
    start = time.time()
    network, tokenizer = build_network(None, quant_ckpt=folder)
    load_s = time.time() - start
    ids = np.asarray([tokenizer.encode(PROMPT)], dtype=np.int64)
    start = time.time()
    logits = network(ids).asnumpy()[0, -1]
    forward_s = time.time() - start
    start = time.time()
    generated = network.generate(ids, max_new_tokens=new_tokens)[0][ids.shape[1]:]
    generate_s = time.time() - start
    ctx = current_context()
    if ctx.rank == 0:
        np.save(logits_path, logits)
    layers = network.config.num_layers
    float_params = sum(int(np.prod(p.shape)) for _, p in network.parameters_and_names() if str(p.dtype) == "Float32")
    int8_params = sum(int(np.prod(p.shape)) for _, p in network.parameters_and_names() if str(p.dtype) == "Int8")
    return {"load_s": round(load_s, 1), "load_s_per_layer": round(load_s / layers, 2),
            "prompt_tokens": int(ids.shape[1]), "forward_s": round(forward_s, 2),
            "generate_s": round(generate_s, 2), "s_per_token": round(generate_s / max(1, new_tokens), 2),
            "generated": [int(t) for t in generated], "text": tokenizer.decode([int(t) for t in generated]),
            "finite": bool(np.isfinite(logits).all()), "int8_gb": round(int8_params / 1e9, 2),
            "float32_gb": round(4 * float_params / 1e9, 2), "tp_rank": ctx.rank, "tp_size": ctx.size,
            "peak_rss_gb_self": _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)}


def merge_ranks(folder: str, output: str) -> dict:
    from golden_ptq.tools.tp_checkpoint import merge
    start = time.time()
    merge(folder, output)
    return {"merge_s": round(time.time() - start, 1)}


def split_per_rank(folder: str, output: str) -> dict:
    from golden_ptq.tools.tp_checkpoint import split
    start = time.time()
    split(folder, output, 2, SHAPE["num_heads"], SHAPE["num_kv_heads"])
    return {"split_s": round(time.time() - start, 1)}


# ----- processes ----------------------------------------------------------------------------------
def _gb(maxrss_kib: int) -> float:
    """``ru_maxrss`` (KiB on Linux) in GB (10^9 bytes)."""
    return round(maxrss_kib * 1024 / 1e9, 3)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(base, f)) for base, _, files in os.walk(folder) for f in files)


def run_child(step: str, spec: dict, workdir: str) -> dict:
    """Run ``step`` in a fresh process; its result plus that process's peak RSS and wall time."""
    spec_path = os.path.join(workdir, f"{step}.spec.json")
    result_path = os.path.join(workdir, f"{step}.result.json")
    with open(spec_path, "w") as handle:
        json.dump(dict(spec, result=result_path), handle)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.time()
    proc = subprocess.Popen([sys.executable, HERE, "--child", step, "--spec", spec_path], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"step {step} failed (exit {proc.returncode})")
    with open(result_path) as handle:
        result = json.load(handle)
    result.update(peak_rss_gb=_gb(usage.ru_maxrss), peak_rss_gib=round(usage.ru_maxrss * 1024 / 2**30, 2),
                  wall_s=round(time.time() - start, 1))
    return result


def run_tp2(spec: dict, workdir: str, timeout: int, step: str = "tp_deploy") -> dict:
    """The ``step`` child (``tp_deploy`` or ``tp_quantize``) under msrun with 2 workers; each rank's result."""
    msrun = shutil.which("msrun")
    if msrun is None:
        return {"available": False, "reason": "msrun (installed with mindspore) is not on PATH"}
    spec_path = os.path.join(workdir, f"{step}.spec.json")
    with open(spec_path, "w") as handle:
        json.dump(dict(spec, result=os.path.join(workdir, step + ".rank{rank}.json")), handle)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_dir = os.path.join(workdir, f"msrun_log_{step}")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    cmd = [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={port}", f"--log_dir={log_dir}",
           "--join=True", HERE, "--child", step, "--spec", spec_path]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0:
        logs = "".join(open(os.path.join(log_dir, name), errors="replace").read()[-2000:]
                       for name in sorted(os.listdir(log_dir)))
        raise RuntimeError(f"msrun exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{logs}")
    ranks = [json.load(open(os.path.join(workdir, f"{step}.rank{r}.json"))) for r in range(2)]
    return {"available": True, "wall_s": round(time.time() - start, 1), "ranks": ranks}


def child_main(step: str, spec_path: str) -> None:
    with open(spec_path) as handle:
        spec = json.load(handle)
    if step == "write":
        result = write_float_folder(spec["float"], spec["layers"])
    elif step == "synthetic":
        result = write_synthetic_quantized(spec["output"], spec["layers"])
    elif step in ("static", "dynamic"):
        result = quantize(spec["float"], spec["output"], step, spec["samples"], spec["length"], spec["in_memory"],
                          spec.get("batch", 1))
    elif step == "deploy":
        result = deploy(spec["folder"], spec["new_tokens"], spec["logits"])
    elif step == "split":
        result = split_per_rank(spec["folder"], spec["output"])
    elif step == "merge":
        result = merge_ranks(spec["folder"], spec["output"])
    elif step in ("tp_deploy", "tp_quantize"):
        from golden_ptq.parallel import init_from_launcher
        rank = init_from_launcher().rank
        if step == "tp_deploy":
            result = deploy(spec["folder"], spec["new_tokens"], spec["logits"])
        else:
            result = quantize(spec["float"], spec["output"], "static", spec["samples"], spec["length"], False,
                              spec.get("batch", 1))
            result["peak_rss_gb_self"] = _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        with open(spec["result"].format(rank=rank), "w") as handle:
            json.dump(result, handle)
        return
    else:
        raise ValueError(f"unknown child step {step!r}")
    with open(spec["result"], "w") as handle:
        json.dump(result, handle)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (32: Llama-2-7B; 2: CI-sized)")
    parser.add_argument("--float", dest="float_model", default=None,
                        help="quantize this float model (HF folder or GGUF; 'default': the embedded SmolLM2) "
                             "instead of writing the synthetic one (the write step is skipped)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {list(STEPS)}")
    parser.add_argument("--workdir", default=None, help="where the folders go (default: a new /tmp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the folders (default: delete them at the end)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--calib-batch-size", type=int, default=1,
                        help="calibration windows per forward (1: the smallest activation working set)")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--in-memory-quantize", action="store_true",
                        help="quantize with the in-memory path (NetworkHelper + PTQ), not the streaming one")
    parser.add_argument("--synthetic-quantized", action="store_true",
                        help="deploy a synthetic int8 folder written directly (no float model, no calibration)")
    parser.add_argument("--tp-source", choices=("quantize", "split", "full"), default="quantize",
                        help="tp2: DEPLOY the per-rank folders the streaming quantizer writes under msrun "
                             "(quantize), or split from the TP=1 result (split, eager: for small --layers), or "
                             "the full folder, each rank slicing it while loading (full)")
    parser.add_argument("--tp-timeout", type=int, default=1800)
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.spec)
        return 0
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps: {unknown[0]!r} is not one of {list(STEPS)}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="large_model_", dir="/tmp")
    os.makedirs(workdir, exist_ok=True)
    paths = {name: os.path.join(workdir, name) for name in ("float", "static", "dynamic", "tp2", "synthetic")}
    if args.float_model:
        from golden_ptq.networks.default_model import default_gguf_path
        paths["float"] = default_gguf_path() if args.float_model == "default" else os.path.abspath(args.float_model)
        steps = [s for s in steps if s != "write"]
        if args.tp_source == "split" or args.synthetic_quantized:
            parser.error("--float: --tp-source split and --synthetic-quantized need the synthetic model's shape")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu, "cores": os.cpu_count(),
              "layers": args.layers, "shape": SHAPE, "calibration": f"{args.samples} x {args.length} tokens"}
    if args.float_model:
        from golden_ptq.streaming.float_source import open_float_source
        source_config = open_float_source(paths["float"]).config
        report.update(model=paths["float"], layers=source_config.num_layers, shape=source_config.to_dict())

    def say(name, result):
        print(f"[{name}] " + json.dumps(result), flush=True)
        report[name] = result

    try:
        quantized = paths["static"]
        if args.synthetic_quantized:
            quantized = paths["synthetic"]
            say("synthetic", run_child("synthetic", {"output": quantized, "layers": args.layers}, workdir))
        if "write" in steps and not args.synthetic_quantized:
            say("write", run_child("write", {"float": paths["float"], "layers": args.layers}, workdir))
        for kind in ("static", "dynamic"):
            if kind in steps and not args.synthetic_quantized:
                say(kind, run_child(kind, {"float": paths["float"], "output": paths[kind], "samples": args.samples,
                                           "length": args.length, "in_memory": args.in_memory_quantize,
                                           "batch": args.calib_batch_size}, workdir))
        tp1_logits = os.path.join(workdir, "tp1_logits.npy")
        if "deploy" in steps:
            if not os.path.isdir(quantized):
                say("deploy", {"available": False, "reason": f"no quantized folder at {quantized}"})
            else:
                say("deploy", run_child("deploy", {"folder": quantized, "new_tokens": args.new_tokens,
                                                   "logits": tp1_logits}, workdir))
        if "tp2" in steps and os.path.isdir(quantized):
            tp_folder = quantized
            if args.tp_source == "quantize" and not args.synthetic_quantized:
                tp_folder = paths["tp2"]
                say("tp2_quantize", run_tp2({"float": paths["float"], "output": tp_folder, "samples": args.samples,
                                             "length": args.length, "batch": args.calib_batch_size}, workdir,
                                            args.tp_timeout, "tp_quantize"))
            elif args.tp_source != "full":
                tp_folder = paths["tp2"]
                say("split", run_child("split", {"folder": quantized, "output": tp_folder}, workdir))
            tp2_logits = os.path.join(workdir, "tp2_logits.npy")
            result = run_tp2({"folder": tp_folder, "new_tokens": args.new_tokens, "logits": tp2_logits},
                             workdir, args.tp_timeout)
            result["source"] = args.tp_source
            if result.get("available") and os.path.isfile(tp1_logits):
                a, b = np.load(tp2_logits), np.load(tp1_logits)
                diff = float(np.abs(a - b).max())
                result.update(max_abs_diff_vs_tp1=diff, rel_diff_vs_tp1=diff / float(np.abs(b).max()),
                              same_tokens=result["ranks"][0]["generated"] == report["deploy"]["generated"])
            say("tp2", result)
            if args.tp_source == "quantize" and result.get("available"):
                # the same per-rank checkpoints, merged and deployed at TP=1: TP=2 DEPLOY must equal it
                merged, merged_logits = paths["tp2"] + "_merged", os.path.join(workdir, "tp2_merged_tp1_logits.npy")
                say("merge", run_child("merge", {"folder": paths["tp2"], "output": merged}, workdir))
                check = run_child("deploy", {"folder": merged, "new_tokens": args.new_tokens,
                                             "logits": merged_logits}, workdir)
                diff = float(np.abs(np.load(tp2_logits) - np.load(merged_logits)).max())
                check.update(max_abs_diff_tp2_vs_merged_tp1=diff,
                             rel_diff=diff / float(np.abs(np.load(merged_logits)).max()),
                             same_tokens=check["generated"] == result["ranks"][0]["generated"])
                say("tp2_vs_merged_tp1", check)
                shutil.rmtree(merged, ignore_errors=True)
    finally:
        if not args.keep:
            for name in ("static", "dynamic", "tp2", "synthetic") + (() if args.float_model else ("float",)):
                shutil.rmtree(paths[name], ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        static, deployed = report.get("static", {}), report.get("deploy", {})
        synthetic = report.get("synthetic", {})
        summary = {"quantize_peak_rss_gb": static.get("peak_rss_gb") if static.get("available") else None,
                   "quantize_s": static.get("quantize_s"),
                   "quantize_path": static.get("path") or static.get("reason"),
                   "dynamic_quantize_peak_rss_gb": report.get("dynamic", {}).get("peak_rss_gb")
                   if report.get("dynamic", {}).get("available") else None,
                   "dynamic_quantize_s": report.get("dynamic", {}).get("quantize_s"),
                   "deploy_peak_rss_gb": deployed.get("peak_rss_gb"),
                   "output_bytes": static.get("output_bytes") or synthetic.get("output_bytes"),
                   "synthetic_quantized": bool(args.synthetic_quantized),
                   "generated": deployed.get("generated"),
                   "tp2_rank_peak_rss_gb": [r["peak_rss_gb_self"] for r in report.get("tp2", {}).get("ranks", [])],
                   "tp2_quantize_rank_peak_rss_gb": [r.get("peak_rss_gb_self") for r in
                                                     report.get("tp2_quantize", {}).get("ranks", [])],
                   "tp2_max_abs_diff": report.get("tp2", {}).get("max_abs_diff_vs_tp1"),
                   "tp2_vs_merged_tp1_max_abs_diff": report.get("tp2_vs_merged_tp1", {}).get(
                       "max_abs_diff_tp2_vs_merged_tp1"),
                   "report": report}
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
