"""Streamed PTQ at tensor parallel size 2 under msrun: each rank reads and writes its own slices,
bit for bit what the in-memory TP=2 path saves for that rank."""
import json
import os

import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQConfig
from golden_ptq.io.folder_set import verify_folder_set
from test_streaming import assert_same_folders, tiny, write_hf_folder
from test_tp_msrun import ROOT, run_msrun

WORKER = os.path.join(ROOT, "tests", "tp", "stream_worker.py")


@pytest.mark.parametrize("ptq", [
    # W8A8 static + C8 with SmoothQuant (column- and row-parallel balance layers), float head
    dict(act_quant_dtype=ms.int8, kvcache_quant_dtype=ms.int8, outliers_suppression="smooth",
         opname_blacklist=["lm_head"]),
])
def test_streamed_tp2_equals_in_memory_tp2(tmp_path, ptq):
    workdir = str(tmp_path)
    source = write_hf_folder(os.path.join(workdir, "src"), tiny(layers=3), seed=9)
    calib = np.random.RandomState(0).randint(0, 97, (4, 24))
    np.save(os.path.join(workdir, "calib.npy"), calib)
    with open(os.path.join(workdir, "job.json"), "w", encoding="utf-8") as handle:
        json.dump({"source": source, "ptq": PTQConfig(**ptq).to_dict()}, handle)
    run_msrun(workdir, WORKER)
    for rank in range(2):
        memory = os.path.join(workdir, "memory", f"rank_{rank}")
        streamed = os.path.join(workdir, "streamed", f"rank_{rank}")
        verify_folder_set(streamed)
        assert_same_folders(memory, streamed, extra=("tp_layout.json",))
