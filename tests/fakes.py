"""Small stand-ins shared by the dataset and evaluation tests."""
import numpy as np


class CharTokenizer:
    """One token per character (id = ord + 3); 0 pad, 1 bos, 2 eos."""
    pad_token_id, bos_token_id, eos_token_id, vocab_size = 0, 1, 2, 259

    def encode(self, text):
        return [min(ord(ch), 255) + 3 for ch in text]

    def decode(self, ids, skip_special_tokens=True):
        if len(ids) and not isinstance(ids[0], (int, np.integer)):
            return [self.decode(row, skip_special_tokens) for row in ids]
        return "".join(chr(i - 3) for i in ids if i >= 3)


TOK = CharTokenizer()
