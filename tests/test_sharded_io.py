"""Sharded safetensors: the streaming writer and the lazy reader, checked against safetensors itself."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from golden_ptq.io.safetensors_files import CorruptFileError, open_safetensors
from golden_ptq.io.sharded_writer import ShardedSafetensorsWriter, bfloat16_bits, write_safetensors


def test_shards_round_trip_and_are_read_by_safetensors(tmp_path):
    rng = np.random.default_rng(0)
    first = {"x.weight": rng.standard_normal((4, 6)).astype(np.float32), "x.codes": np.arange(-3, 3, dtype=np.int8)}
    second = {"y.bias": rng.standard_normal(5).astype(np.float32), "y.sum": np.arange(4, dtype=np.int32)}
    writer = ShardedSafetensorsWriter(str(tmp_path))
    writer.write_shard(first)
    writer.write_shard(second)
    index = writer.finish()
    assert sorted(os.listdir(tmp_path)) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                           "model.safetensors.index.json"]
    weight_map = json.load(open(index))["weight_map"]
    assert weight_map["y.bias"] == "model-00002-of-00002.safetensors"
    reader = open_safetensors(str(tmp_path))
    assert reader.names() == sorted({**first, **second})
    for name, array in {**first, **second}.items():
        got = reader.get(name)
        assert got.dtype == array.dtype and np.array_equal(got, array)
    assert np.array_equal(load_file(str(tmp_path / "model-00001-of-00002.safetensors"))["x.codes"], first["x.codes"])


def test_bfloat16_bits_round_to_nearest_and_widen_back(tmp_path):
    values = np.array([1.0, -2.5, 3.14159, 1e-3, 65504.0, 1.00390625], dtype=np.float32)
    path = str(tmp_path / "b.safetensors")
    write_safetensors(path, {"v": bfloat16_bits(values)}, dtypes={"v": "BF16"})
    back = open_safetensors(path).get("v")
    assert back.dtype == np.float32
    assert np.all(np.abs(back - values) <= np.abs(values) * 2 ** -8)  # bf16 keeps 8 significant bits
    assert back[0] == 1.0 and back[1] == -2.5
    assert back[5] == 1.0  # 1 + 2^-8 is a tie: rounds to the even neighbour


def test_reader_matches_safetensors_files_written_by_the_library(tmp_path):
    arrays = {"a": np.random.default_rng(1).standard_normal((3, 3)).astype(np.float32)}
    save_file(arrays, str(tmp_path / "m.safetensors"))
    assert np.array_equal(open_safetensors(str(tmp_path / "m.safetensors")).get("a"), arrays["a"])


def test_writer_refuses_a_name_twice_and_an_index_names_missing_shards(tmp_path):
    writer = ShardedSafetensorsWriter(str(tmp_path / "w"))
    writer.write_shard({"a": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="'a' was already written in shard 1"):
        writer.write_shard({"a": np.zeros(2, np.float32)})
    index = writer.finish()
    os.remove(str(tmp_path / "w" / "model-00001-of-00001.safetensors"))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00001.safetensors"):
        open_safetensors(index)


def test_two_shards_holding_one_tensor_are_ambiguous(tmp_path):
    write_safetensors(str(tmp_path / "a.safetensors"), {"t": np.zeros(2, np.float32)})
    write_safetensors(str(tmp_path / "b.safetensors"), {"t": np.ones(2, np.float32)})
    with pytest.raises(CorruptFileError, match="ambiguous"):
        open_safetensors(str(tmp_path))
