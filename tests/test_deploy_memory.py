"""DEPLOY that fits: sharded and single-file quantized folders load tensor by tensor, strictly, into a
network whose quantized layers never hold float weights; the parameter layout table is the one source."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, OutliersSuppressionType, PTQConfig, PTQMode, QuantGranularity
from golden_ptq.deploy import find_checkpoint, load_quantized, save_quantized
from golden_ptq.io.checkpoint import CheckpointMismatchError, load_checkpoint, load_state, read_checkpoint
from golden_ptq.io.folder_set import FolderSetError, write_folder_set
from golden_ptq.io.safetensors_files import open_safetensors
from golden_ptq.io.sharded_writer import ShardedSafetensorsWriter
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.quant_math import layouts

I8 = ms.int8
SCHEMES = {
    "a8w8_smooth": dict(act_quant_dtype=I8, outliers_suppression=OutliersSuppressionType.SMOOTH,
                        opname_blacklist=["w2", "lm_head"]),
    "a8w8_dynamic": dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN),
    "a16w8_g16": dict(weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=16),
}
TEST_IDS = np.random.RandomState(9).randint(0, 97, (2, 12))


def _calibration(config, n=2, length=16):
    rng = np.random.RandomState(0)
    return [rng.randint(0, config.vocab_size, (2, length)) for _ in range(n)]


def _quantized_folder(tmp_path, config, scheme):
    network = LlamaForCausalLM(config, seed=0)
    ptq = PTQ(PTQConfig(**SCHEMES[scheme]))
    ptq.apply(network, None, _calibration(config))
    ptq.convert(network)
    folder = str(tmp_path / scheme)
    save_quantized(network, ptq, folder)
    return folder, network(TEST_IDS).asnumpy()


def _reshard(source, target):
    """``source``'s set with its weights as one shard per decoder layer plus one for the rest (the
    streamed form of the issue 16 contract)."""
    reader = open_safetensors(os.path.join(source, "model.safetensors"))

    def fill(tmp):
        groups = {}
        for name in reader.names():
            parts = name.split(".")
            key = int(parts[2]) if name.startswith("model.layers.") else -1
            groups.setdefault(key, []).append(name)
        writer = ShardedSafetensorsWriter(tmp)
        for key in sorted(groups):
            writer.write_shard({name: reader.get(name) for name in groups[key]})
        writer.finish()
        for entry in os.listdir(source):
            if entry not in ("model.safetensors", "manifest.json"):
                shutil.copy(os.path.join(source, entry), os.path.join(tmp, entry))

    write_folder_set(target, fill)
    return target


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_single_and_sharded_folders_reproduce_the_quantized_logits(tmp_path, tiny_config, scheme):
    folder, quantized = _quantized_folder(tmp_path, tiny_config, scheme)
    sharded = _reshard(folder, str(tmp_path / "sharded"))
    assert find_checkpoint(sharded).endswith("model.safetensors.index.json")
    assert len([f for f in os.listdir(sharded) if f.startswith("model-0")]) == tiny_config.num_layers + 1
    # today's path: the DEPLOY network filled from the whole checkpoint read at once
    eager, ptq = load_quantized(folder)
    load_state(read_checkpoint(os.path.join(folder, "model.safetensors")), eager, "eager")
    reference = eager(TEST_IDS).asnumpy()
    np.testing.assert_array_equal(reference, quantized)
    for source in (folder, sharded):
        network, _ = load_quantized(source)
        weights = {name: param for name, param in network.parameters_and_names() if name.endswith("wq.weight")}
        assert weights and all(param.dtype == ms.int8 for param in weights.values())
        np.testing.assert_array_equal(network(TEST_IDS).asnumpy(), reference)
        tokens = network.generate(TEST_IDS[:1, :6], max_new_tokens=3)
        assert len(tokens[0]) == 9


def test_sharded_load_is_strict(tmp_path, tiny_config):
    folder, _ = _quantized_folder(tmp_path, tiny_config, "a8w8_dynamic")
    whole = read_checkpoint(os.path.join(folder, "model.safetensors"))

    def deploy_network():
        network = LlamaForCausalLM(tiny_config)
        ptq = PTQ(PTQConfig(mode=PTQMode.DEPLOY, **SCHEMES["a8w8_dynamic"]))
        ptq.apply(network)
        ptq.convert(network)
        return network

    def write(arrays, name):
        writer = ShardedSafetensorsWriter(str(tmp_path / name))
        names = sorted(arrays)
        writer.write_shard({k: arrays[k] for k in names[: len(names) // 2]})
        writer.write_shard({k: arrays[k] for k in names[len(names) // 2:]})
        return writer.finish()

    weight = "model.layers.1.attention.wk.weight"
    cases = {
        "missing": ({k: v for k, v in whole.items() if k != weight},
                    rf"no parameter '{weight}' \(the network expects Int8 \(32, 64\)\)"),
        "extra": (dict(whole, **{"model.layers.1.attention.wk.stray": np.zeros(3, np.float32)}),
                  r"parameter 'model.layers.1.attention.wk.stray' is in the checkpoint but not in the network"),
        "shape": (dict(whole, **{weight: whole[weight][:16]}),
                  rf"parameter '{weight}' is Int8 \(16, 64\) in the checkpoint, the network expects Int8 \(32, 64\)"),
        "dtype": (dict(whole, **{weight: whole[weight].astype(np.float32)}),
                  rf"parameter '{weight}' is Float32 \(32, 64\) in the checkpoint, the network expects Int8"),
    }
    for name, (arrays, message) in cases.items():
        index = write(arrays, name)
        network = deploy_network()
        before = network.model.layers[0].attention.wq.weight.shape
        with pytest.raises(CheckpointMismatchError, match=message):
            load_checkpoint(index, network)
        assert network.model.layers[0].attention.wq.weight.shape == before  # checked before anything changed
        with pytest.raises(CheckpointMismatchError, match=message):
            load_state(arrays, deploy_network(), index)   # the eager loader says the same


def test_two_weight_forms_in_one_folder_are_ambiguous(tmp_path):
    for name in ("model.safetensors", "model.safetensors.index.json"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(FolderSetError, match=r"holds both model.safetensors and model.safetensors.index.json; "
                                             r".* ambiguous"):
        find_checkpoint(str(tmp_path))


def test_layout_table_matches_quantized_and_deployed_cells(tiny_config):
    """For every scheme, what quantize keeps is what DEPLOY declares (names, dtypes, shapes)."""
    for scheme, kwargs in SCHEMES.items():
        network = LlamaForCausalLM(tiny_config, seed=0)
        PTQ(PTQConfig(**kwargs)).apply(network, None, _calibration(tiny_config, n=1))
        deployed = LlamaForCausalLM(tiny_config)
        PTQ(PTQConfig(mode=PTQMode.DEPLOY, **kwargs)).apply(deployed)
        cell = network.model.layers[0].attention.wq
        key = layouts.scheme_key(cell.spec, cell.has_input_shift)
        table = [entry.name for entry in layouts.quantized_entries(key)]
        local = [name for name, _ in cell.parameters_and_names(expand=False) if name != "bias"]
        assert local == table, scheme
        quantized = {n: (p.dtype, tuple(p.shape)) for n, p in network.parameters_and_names()}
        declared = {n: (p.dtype, tuple(p.shape)) for n, p in deployed.parameters_and_names()}
        assert quantized == declared, scheme


_MEASURE = textwrap.dedent("""
    import json, sys, threading, time
    import numpy as np
    import psutil
    from golden_ptq.deploy import load_quantized
    from golden_ptq.networks.llama import LlamaForCausalLM
    from golden_ptq.config.model_config import LlamaConfig
    LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
                                 intermediate_size=16, max_position_embeddings=8))   # imports and runtime set up
    process, peak, done = psutil.Process(), [0], threading.Event()
    def poll():   # the process's resident set every millisecond while the load runs (ru_maxrss is the import's)
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)
    before = process.memory_info().rss
    thread = threading.Thread(target=poll)
    thread.start()
    network, _ = load_quantized(sys.argv[1])
    done.set()
    thread.join()
    int8 = sum(int(np.prod(p.shape)) for _, p in network.parameters_and_names() if str(p.dtype) == "Int8")
    print(json.dumps({"growth": max(peak[0], process.memory_info().rss) - before, "int8_bytes": int8}))
""")


def test_deploy_load_never_holds_float_weights_of_quantized_layers(tmp_path):
    """A 12-layer net whose Linear weights are 200 MB in float32 and 50 MB in int8: loading it in
    DEPLOY grows the process by the int8 weights, not by a float copy (the old path built the float
    network and read the whole checkpoint: > 300 MB)."""
    from golden_ptq.config.model_config import LlamaConfig
    config = LlamaConfig(vocab_size=256, hidden_size=512, num_layers=12, num_heads=8, num_kv_heads=8,
                         intermediate_size=2048, max_position_embeddings=64)
    network = LlamaForCausalLM(config, seed=0)
    ptq = PTQ(PTQConfig(**SCHEMES["a8w8_dynamic"]))
    ptq.apply(network, None, [np.arange(8)[None] % 256])
    ptq.convert(network)
    folder = str(tmp_path / "big")
    save_quantized(network, ptq, folder)
    del network
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _MEASURE, folder], capture_output=True, text=True, env=env,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    float_bytes = 4 * result["int8_bytes"]
    assert result["int8_bytes"] > 45e6
    assert result["growth"] < result["int8_bytes"] + float_bytes / 2, result


def test_rank_slices_of_a_full_sharded_checkpoint_do_not_pin_the_full_tensors(tmp_path, tiny_config, monkeypatch):
    """A rank loading a full checkpoint keeps its slices only: a row slice is a contiguous view of
    the tensor read, and handing over the view kept the whole tensor alive (7.4 GB instead of 5.2 GB
    per rank for the 7B shape)."""
    from golden_ptq.io import checkpoint
    from golden_ptq.io.checkpoint import load_full_checkpoint
    from golden_ptq.parallel.context import TPContext
    folder, _ = _quantized_folder(tmp_path, tiny_config, "a8w8_dynamic")
    sharded = _reshard(folder, str(tmp_path / "sharded"))
    handed = []
    original = checkpoint.Tensor.from_numpy

    def record(array):
        handed.append(array)
        return original(array)

    monkeypatch.setattr(checkpoint.Tensor, "from_numpy", staticmethod(record))
    network = LlamaForCausalLM(tiny_config, tp=TPContext(2, 0))
    ptq = PTQ(PTQConfig(mode=PTQMode.DEPLOY, **SCHEMES["a8w8_dynamic"]))
    ptq.apply(network)
    ptq.convert(network)
    load_full_checkpoint(find_checkpoint(sharded), network)
    assert network.model.layers[0].feed_forward.w1.weight.shape == (tiny_config.intermediate_size // 2, 64)
    assert len(handed) == len(list(network.parameters_and_names()))
    for array in handed:
        base = array
        while isinstance(base.base, np.ndarray):
            base = base.base
        assert base.nbytes == array.nbytes
