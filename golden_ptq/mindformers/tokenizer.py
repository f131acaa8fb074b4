"""The tokenizer a MindFormers run yaml names (``processor.tokenizer``), behind golden_ptq's tokenizer interface."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence


class SentencePieceTokenizer:
    """A SentencePiece ``tokenizer.model`` (MindFormers' ``LlamaTokenizer``) with golden_ptq's
    ``encode`` (no BOS added) / ``decode`` and special token ids. Needs ``sentencepiece``, which
    mindformers requires."""

    def __init__(self, path: str, add_bos_token: bool = True, pad_token_id: Optional[int] = None):
        import sentencepiece
        self.backend = sentencepiece.SentencePieceProcessor()
        if not self.backend.Load(path):
            raise ValueError(f"{path}: not a SentencePiece model")
        self.bos_token_id = _id_or_none(self.backend.bos_id())
        self.eos_token_id = _id_or_none(self.backend.eos_id())
        pad = _id_or_none(self.backend.pad_id())
        if pad_token_id is None:
            pad_token_id = pad if pad is not None else self.eos_token_id
        self.pad_token_id = pad_token_id
        self.add_bos_token = bool(add_bos_token and self.bos_token_id is not None)
        self.special_ids = frozenset(i for i in (self.bos_token_id, self.eos_token_id, pad) if i is not None)
        self.vocab_size = self.backend.GetPieceSize()

    def encode(self, text: str) -> List[int]:
        return list(self.backend.EncodeAsIds(text))

    def __call__(self, text: str) -> List[int]:
        return self.encode(text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self.backend.DecodeIds(ids)


def _id_or_none(value: int) -> Optional[int]:
    return None if value is None or value < 0 else int(value)


def tokenizer_from_run_yaml(spec: dict, resolve, where: str):
    """golden_ptq's tokenizer for ``processor.tokenizer`` (``spec``; ``resolve`` turns its paths into
    files beside the yaml): a Hugging Face ``tokenizer.json``, a SentencePiece ``tokenizer.model``,
    or ``type: golden_ptq_default`` for the embedded SmolLM2 tokenizer."""
    from golden_ptq.networks.tokenizer import Tokenizer
    if spec.get("type") == "golden_ptq_default":
        from golden_ptq.networks.default_model import default_gguf_path
        from golden_ptq.networks.loaders.gguf_loader import GGUFFile
        return Tokenizer.from_gguf_metadata(GGUFFile(default_gguf_path()).metadata)
    file = resolve(spec.get("tokenizer_file") or spec.get("vocab_file"))
    if file and file.endswith(".json") and os.path.isfile(file):
        return Tokenizer.from_hf_dir(os.path.dirname(os.path.abspath(file)))
    if file and file.endswith(".model") and os.path.isfile(file):
        return SentencePieceTokenizer(file, add_bos_token=spec.get("add_bos_token", True))
    raise ValueError(f"{where}: processor.tokenizer needs tokenizer_file or vocab_file naming an existing "
                     f"tokenizer.json or SentencePiece .model file, or type: golden_ptq_default; got {spec!r}")
