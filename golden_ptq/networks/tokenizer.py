"""A small tokenizer facade over Hugging Face ``tokenizers``: the interface datasets and evaluation use."""
from __future__ import annotations

import json
import os
from typing import Iterable, List, Optional, Sequence, Union

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers


class Tokenizer:
    """``encode(text) -> ids`` (no BOS added) and ``decode(ids) -> text``, plus special token ids."""

    def __init__(self, backend: _HFTokenizer, bos_token_id: Optional[int], eos_token_id: Optional[int],
                 pad_token_id: Optional[int], special_ids: Iterable[int] = (), add_bos_token: bool = False):
        self.backend = backend
        #: whether the model expects BOS in front of a prompt (``encode`` never adds it itself)
        self.add_bos_token = bool(add_bos_token and bos_token_id is not None)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id
        self.special_ids = frozenset(int(i) for i in special_ids)
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> List[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Union[Sequence[int], Sequence[Sequence[int]]],
               skip_special_tokens: bool = True) -> Union[str, List[str]]:
        ids = [list(map(int, row)) for row in ids] if _is_nested(ids) else list(map(int, ids))
        if ids and isinstance(ids[0], list):
            return [self._decode_one(row, skip_special_tokens) for row in ids]
        return self._decode_one(ids, skip_special_tokens)

    def _decode_one(self, ids: List[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self.backend.decode(ids, skip_special_tokens=False)

    def __call__(self, text: str) -> List[int]:
        return self.encode(text)

    def save(self, folder: str) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (what :meth:`from_hf_dir` reads back)."""
        self.backend.save(os.path.join(folder, "tokenizer.json"))
        names = {}
        for key in ("bos", "eos", "pad"):
            token_id = getattr(self, f"{key}_token_id")
            if token_id is not None:
                names[f"{key}_token"] = self.backend.id_to_token(int(token_id))
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as handle:
            json.dump({**names, "add_bos_token": self.add_bos_token}, handle, indent=1, sort_keys=True)

    # ----- constructors -----------------------------------------------------------------------
    @classmethod
    def from_hf_dir(cls, path: str) -> "Tokenizer":
        """Read ``tokenizer.json`` (and special ids from ``config.json``/``tokenizer_config.json``)."""
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no tokenizer.json in {path}; a Hugging Face model directory needs one")
        backend = _HFTokenizer.from_file(file)
        ids = _special_ids_from_hf_dir(path, backend)
        specials = [i for i, tok in _added_tokens(backend) if tok.special]
        add_bos = False
        config_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as handle:
                add_bos = bool(json.load(handle).get("add_bos_token", False))
        return cls(backend, ids.get("bos"), ids.get("eos"), ids.get("pad"), specials, add_bos)

    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> "Tokenizer":
        """Rebuild a byte-level BPE tokenizer (``tokenizer.ggml.model == "gpt2"``) from GGUF metadata."""
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"GGUF tokenizer model {model!r} is not supported; only byte-level BPE ('gpt2') is")
        tokens: List[str] = meta["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        vocab = {tok: i for i, tok in enumerate(tokens)}
        backend = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        splitters = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if meta.get("tokenizer.ggml.pre") in ("smollm", "llama-bpe", "qwen2"):
            # These pre-tokenizers split every digit on its own before the byte-level regex.
            splitters.insert(0, pre_tokenizers.Digits(individual_digits=True))
        backend.pre_tokenizer = pre_tokenizers.Sequence(splitters)
        backend.decoder = decoders.ByteLevel()
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        special = [i for i, t in enumerate(types) if int(t) == 3]  # 3 = control token in llama.cpp
        from tokenizers import AddedToken
        backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special])
        return cls(backend, meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id"),
                   meta.get("tokenizer.ggml.padding_token_id"), special,
                   bool(meta.get("tokenizer.ggml.add_bos_token", False)))


def _is_nested(ids) -> bool:
    try:
        first = ids[0]
    except (IndexError, TypeError, KeyError):
        return False
    return hasattr(first, "__len__") and not isinstance(first, str)


def _added_tokens(backend: _HFTokenizer):
    return sorted(backend.get_added_tokens_decoder().items())


def _special_ids_from_hf_dir(path: str, backend: _HFTokenizer) -> dict:
    found = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
        for key in ("bos", "eos", "pad"):
            token = data.get(f"{key}_token")
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str) and key not in found and backend.token_to_id(token) is not None:
                found[key] = backend.token_to_id(token)
    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            config = json.load(handle)
        for key in ("bos", "eos", "pad"):
            value = config.get(f"{key}_token_id")
            if isinstance(value, list):
                value = value[0] if value else None
            if key not in found and isinstance(value, int):
                found[key] = value
    return found
