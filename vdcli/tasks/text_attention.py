"""Self-attention between words: what each token of a prompt reads of the tokens before it.

``vd attn-map --text "a bold seven leaning right" --checkpoint CLIP_OR_TEXT_LDM``. The lecture's
first picture of attention (Vaswani et al. 2017, fig. 3-5: a sentence attending to itself) on
vd's own CLIP text tower (``models/clip.TextTransformer``, GPT-2 style: causal). Conventions:

- one matrix per block, first to last, [L, L] for the prompt's L real tokens (the words as the
  tokenizer cut them, then "<end>", whose state is the text's embedding); row i is query token i,
  column j key token j; a row sums to 1;
- causal: token i reads tokens 0..i only, so everything above the diagonal is exactly 0; the
  picture draws those cells apart (hatched), so the mask is visible, not just dark;
- heads are averaged (the mean of rows that sum to 1 still sums to 1), or one is chosen.

The text tower comes from a CLIP checkpoint (kind "clip") or a text LDM, which embeds its CLIP
under the prefix "clip" (``tasks.clip.load_text_encoder``). Anything else has no text tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vdcli.checkpoint import KINDS, Checkpoint
from vdcli.errors import VdError
from vdcli.tasks.clip import TextEncoder, load_text_encoder


@dataclass
class TextAttention:
    tokens: list[str]  # the L real tokens: the words as cut, then "<end>"
    maps: list[torch.Tensor]  # per block, (heads, L, L); row i = query token i; zero above the diagonal
    unknown: list[str]  # words the tokenizer does not know (each read as [UNK])

    def per_layer(self, head: int | None = None) -> list[torch.Tensor]:
        """One (L, L) matrix per block: the heads' mean (rows still sum to 1), or head ``head``."""
        heads = self.maps[0].shape[0]
        if head is not None and not 0 <= head < heads:
            raise VdError(f"--head {head}: this text tower has {heads} heads (0..{heads - 1})")
        return [m.mean(0) if head is None else m[head] for m in self.maps]

    @property
    def hidden(self) -> torch.Tensor:
        """(L, L) bool, True above the diagonal: the causal mask, the keys a query never reads."""
        n = len(self.tokens)
        return torch.ones(n, n, dtype=torch.bool).triu(1)


def load_text_tower(ckpt: Checkpoint, device: torch.device) -> TextEncoder:
    """The CLIP text tower and tokenizer of a CLIP checkpoint or a text LDM; anything else is refused in one line."""
    if ckpt.kind == "clip":
        return load_text_encoder(ckpt, device)
    if ckpt.kind == "ldm" and ckpt.has("clip"):  # a text LDM carries its CLIP
        return load_text_encoder(ckpt, device, prefix="clip")
    what = KINDS[ckpt.kind]
    if ckpt.kind == "ldm":
        what = f"a latent diffusion model conditioned on {ckpt.meta.get('conditioning', 'class')}"
    raise VdError(f"{ckpt.path} is {what}, which has no text tower; --text needs a CLIP (vd train-clip) "
                  "or a text LDM (conditioning: text) checkpoint")


@torch.no_grad()
def text_attention(encoder: TextEncoder, prompt: str) -> TextAttention:
    """Every block's causal self-attention over ``prompt``'s real tokens (at most max_length, [END] included)."""
    ids, mask = encoder.tokenizer.encode([prompt])  # (1, L) each: one prompt, so every position is real
    maps = encoder.tower.attention_maps(ids.to(encoder.device), mask.to(encoder.device))  # per block (1, heads, L, L)
    return TextAttention(encoder.tokens(prompt), [m[0].float().cpu() for m in maps], encoder.unknown(prompt))
