"""The text tokenizer: prompts -> token ids, a Hugging Face ``tokenizers`` word-level model.

Why word-level and not BPE: the captions of a vd dataset are a closed vocabulary of a few dozen
words (``a``, ``bold``, ``seven``, ``leaning`` ...), so one token per word loses nothing, keeps
every word whole for ``vd attn-map`` (one map per word) and makes the vocabulary small enough to
read. A word the tokenizer never saw becomes ``[UNK]`` (``unknown`` lists them, for a warning).

Conventions: text is lower-cased and split at white space and punctuation; every prompt ends
with the end-of-text token ``[END]`` (the position CLIP's text tower pools, Radford et al. 2021
sec. 2.4), so the empty prompt "" is the single token ``[END]``: a fixed "no condition" sequence.
At most ``max_length`` tokens, ``[END]`` included (longer prompts lose their last words); batches
are padded with ``[PAD]`` (id 0) to their longest prompt, and the mask says which positions hold
real tokens. The trained tokenizer is a JSON string (``to_json``) stored in the checkpoint's
metadata: nothing is downloaded, ever.
"""

from __future__ import annotations

from typing import Iterable

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, trainers

PAD, UNK, END = "[PAD]", "[UNK]", "[END]"


class Tokenizer:
    def __init__(self, hf: HFTokenizer, max_length: int):
        if max_length < 2:
            raise ValueError(f"max_length must leave room for a word and [END], got {max_length}")
        self.hf = hf
        self.max_length = max_length
        self.pad_id, self.unk_id, self.end_id = (hf.token_to_id(t) for t in (PAD, UNK, END))

    @classmethod
    def train(cls, texts: Iterable[str], max_length: int = 16) -> Tokenizer:
        """A word-level vocabulary of every word in ``texts`` (the special tokens take ids 0, 1, 2)."""
        hf = HFTokenizer(models.WordLevel(unk_token=UNK))
        hf.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        hf.pre_tokenizer = pre_tokenizers.Whitespace()
        hf.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=[PAD, UNK, END], min_frequency=1))
        return cls(hf, max_length)

    def to_json(self) -> str:
        return self.hf.to_str()

    @classmethod
    def from_json(cls, text: str, max_length: int) -> Tokenizer:
        return cls(HFTokenizer.from_str(text), max_length)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def _words(self, prompt: str):
        enc = self.hf.encode(prompt, add_special_tokens=False)
        keep = self.max_length - 1  # room for [END]
        return enc.ids[:keep], enc.offsets[:keep]

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 [B, L], mask bool [B, L]: True = a real token), L = the longest prompt's tokens."""
        rows = [self._words(p)[0] + [self.end_id] for p in prompts]
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids, mask

    def tokens(self, prompt: str) -> list[str]:
        """The prompt's tokens as written (an unknown word keeps its spelling), then "<end>"."""
        ids, offsets = self._words(prompt)
        return [prompt[a:b] for a, b in offsets] + ["<end>"]

    def unknown(self, prompt: str) -> list[str]:
        """The words of ``prompt`` the tokenizer does not know (they become [UNK])."""
        ids, offsets = self._words(prompt)
        return [prompt[a:b] for i, (a, b) in zip(ids, offsets) if i == self.unk_id]

    def decode(self, ids: torch.Tensor) -> str:
        """Token ids [L] -> the words, up to [END]."""
        words = []
        for i in ids.tolist():
            if i == self.end_id:
                break
            words.append(self.hf.id_to_token(i))
        return " ".join(words)
