"""Conditioning: what a denoiser is told besides x_t and t, as one value, in one place.

Conventions, in one place:

- A **request** is what a user asks of one image: a class index for a class model (the null
  class, index ``len(classes)``, asks for nothing), a prompt for a text model ("" asks for
  nothing). A batch asks a list (or a LongTensor) of them.
- A **condition**, ``Cond``, is one batch's request as the denoiser takes it: class labels
  [B], or a text's token states [B, L, D] with their mask [B, L] (True = a real token) and the
  pooled state [B, D]; ``None`` for a model built without a condition. Every denoiser (U-Net,
  DiT, a ControlNet and the model it steers) takes it as one argument, ``net(x_t, t, cond)``,
  and reads the fields it was built for: labels through its class table, states through
  cross-attention (Rombach et al. 2022, sec. 3.3), pooled added to the time embedding.
- **One strategy per recipe setting** (``conditioning: class | none | text``), each a class
  here with the same methods: what the denoiser is built with (``denoiser_inputs``), the
  training column and its drop to the null (``column``, ``training``: Ho & Salimans 2022,
  sec. 3.2), the null request, how a request becomes a condition (``encode``), what ``--class``
  / ``--prompt`` / ``--negative-prompt`` mean (``parse``), the rows of the training grids, and
  its name in checkpoint metadata (``name``). ``STRATEGIES`` maps the setting to its class. A
  fourth kind of condition is a fourth class here, and nothing else branches on the kind.
- **Guidance, once** (``guided``): out = ref + w (out − ref), EDM2's ``ref_Dx.lerp(Dx,
  guidance)`` (Karras et al. 2024). The reference is the same network under the null condition
  or a negative prompt (classifier-free guidance, Ho & Salimans 2022 eq. 6), or a weaker
  network under the same condition (autoguidance, Karras et al. 2024 eq. 2).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Literal, Protocol, Sequence, get_args

import difflib

import torch
from torch.nn import functional as F

from vdcli.errors import VdError

Request = list  # list[int] (class indices) or list[str] (prompts), one per image
ConditioningKind = Literal["class", "none", "text"]  # a recipe's conditioning: setting, one strategy each (STRATEGIES)


@dataclass(frozen=True)
class Cond:
    """One batch's condition, as every denoiser takes it (``net(x_t, t, cond)``)."""

    labels: torch.Tensor | None = None  # [B] long in 0..num_classes (num_classes: the null)
    states: torch.Tensor | None = None  # [B, L, D]: the text encoder's token states
    mask: torch.Tensor | None = None  # [B, L] bool, True = a real token
    pooled: torch.Tensor | None = None  # [B, D]: the whole prompt's state

    def _map(self, f: Callable[[torch.Tensor], torch.Tensor]) -> Cond:
        return Cond(**{k.name: None if getattr(self, k.name) is None else f(getattr(self, k.name)) for k in fields(self)})

    def to(self, device: torch.device | str) -> Cond:
        return self._map(lambda v: v.to(device))

    def __getitem__(self, rows: slice) -> Cond:
        return self._map(lambda v: v[rows])

    @staticmethod
    def cat(parts: Sequence[Cond]) -> Cond:
        """Batches one after the other (a guided call: the condition, then the reference)."""
        names = [k.name for k in fields(Cond)]
        return Cond(**{n: None if getattr(parts[0], n) is None else torch.cat([getattr(p, n) for p in parts]) for n in names})


Denoiser = Callable[[torch.Tensor, torch.Tensor, "Cond | None"], torch.Tensor]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided(net: Denoiser, cond: Cond | None, w: float, reference: Cond | None = None,
           guide: Denoiser | None = None) -> ModelFn:
    """Guidance as a sampler's model_fn: out = ref + w (out − ref), with out = net(x, t, cond) and

    - ref = net(x, t, reference): classifier-free guidance (Ho & Salimans 2022, eq. 6), the
      reference being the null condition (the label or caption dropped in training) or a
      negative prompt; both halves go through the network as one batch of 2B;
    - ref = guide(x, t, cond): autoguidance (Karras et al. 2024, eq. 2), a weaker version of the
      same network (in vd: its own averaged weights early in training), under the same condition.

    Applied to the raw output, which is right for ε and v alike (both are linear in it). w = 1 is
    ``net`` alone and computes no reference; w = 0 is the reference alone. Written as
    ref + w · (out − ref) rather than ``torch.lerp``, whose formula changes at weight 0.5.
    """
    if w != 1.0 and (reference is None) == (guide is None):
        raise ValueError("guidance needs exactly one reference: a reference condition or a guide network")

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if w == 1.0:
            return net(x, t, cond)
        if guide is not None:
            out, ref = net(x, t, cond), guide(x, t, cond)
        else:
            both = net(torch.cat([x, x]), torch.cat([t, t]), Cond.cat([cond, reference]))  # (2B, ...)
            out, ref = both.chunk(2)  # (B, ...) each
        return ref + w * (out - ref)

    return model_fn


class TextEncoder(Protocol):
    """A frozen text tower with its tokenizer (``tasks.clip.TextEncoder``)."""

    dim: int
    max_length: int

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def tokens(self, prompt: str) -> list[str]: ...

    def unknown(self, prompt: str) -> list[str]: ...


def draw_captions(captioner, rows: torch.Tensor) -> list[str]:
    """One caption for each training image in ``rows`` (their indices), a new phrasing at every step.

    The phrasings come from a generator seeded from the global RNG, which the trainer reseeds
    from (seed, step) before every step: a resumed run draws the same captions. Every caption
    stream of vd (CLIP, a text LDM, a ControlNet on one) is drawn here.
    """
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    return [captioner.caption(int(i), g) for i in rows.tolist()]


class TextCache:
    """The frozen text encoder's (states, pooled, mask) per unique caption, computed once each.

    Captions are drawn anew at every step from a few phrasings per image, so a run meets only a
    few hundred distinct strings; each is encoded the first time it is seen, padded to the
    tower's ``max_length`` so that every batch has one length.
    """

    def __init__(self, text: TextEncoder):
        self.text = text
        self.rows: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> Cond:
        new = sorted({c for c in captions if c not in self.rows})
        if new:
            states, pooled, mask = self.text.encode(new)  # (n, L, D), (n, D), (n, L)
            pad = self.text.max_length - states.shape[1]
            states = F.pad(states, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
            for i, c in enumerate(new):
                self.rows[c] = (states[i], pooled[i], mask[i])
        states, pooled, mask = (torch.stack(parts) for parts in zip(*(self.rows[c] for c in captions)))
        return Cond(states=states, mask=mask, pooled=pooled)  # (B, L, D), (B, L), (B, D)


@dataclass
class Parsed:
    """What ``--class`` / ``--prompt`` asked for: one request per row, the rows' names, and whether
    they ask for nothing (then the guidance is autoguidance, if the model kept a guide)."""

    requests: Request
    names: list[str]
    unconditional: bool


def parse_classes(spec: str, classes: list[str]) -> list[int]:
    """'7', 'seven', '3,7', 'all' -> class indices; a miss names the nearest class."""
    if spec.strip().lower() == "all":
        return list(range(len(classes)))
    lower = [c.lower() for c in classes]
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part.isdigit() and int(part) < len(classes):
            out.append(int(part))
        elif part.lower() in lower:
            out.append(lower.index(part.lower()))
        else:
            close = difflib.get_close_matches(part.lower(), lower, n=1)
            hint = f"; did you mean '{classes[lower.index(close[0])]}'?" if close else ""
            raise VdError(f"unknown class '{part}'{hint} (classes: 0..{len(classes) - 1} or {', '.join(classes)})")
    return out


class Conditioning:
    """The strategy of one recipe setting. ``classes`` are the training data's class names."""

    name: ClassVar[str]
    reads_text: ClassVar[bool] = False  # a text tower: the LDM trains a CLIP first and carries it

    def __init__(self, classes: list[str], text: TextEncoder | None = None, captioner=None):
        self.classes = list(classes)
        self.text, self.captioner = text, captioner

    # --- the denoiser ---------------------------------------------------------------------

    @classmethod
    def denoiser_inputs(cls, meta: dict) -> dict:
        """What the denoiser of an LDM checkpoint's (or recipe's) ``meta`` is built with:
        ``num_classes`` (its label table, plus the null class) and ``context_dim`` (cross-attention)."""
        return {"num_classes": 0}

    # --- requests, and the condition they become ------------------------------------------

    @property
    def null_class(self) -> int:
        return len(self.classes)

    def null(self) -> int | str:
        """The request for "no condition"."""
        return self.null_class

    def of_class(self, label: int) -> int | str:
        """The request for one of the training data's classes (a ControlNet's map asks for its own digit)."""
        return label

    def repeat(self, requests: Sequence, n: int) -> Request:
        """Each request n times in a row."""
        return [r for r in requests for _ in range(n)]

    def is_null(self, requests: Sequence, negative: Sequence[str] | None = None) -> bool:
        """Whether every image of a batch asks for nothing (autoguidance's case)."""
        return negative is None and all(r == self.null() for r in _items(requests))

    def encode(self, requests: Sequence, device: torch.device) -> Cond | None:
        """A batch's requests as the denoiser's condition."""
        return None

    def reference(self, requests: Sequence, negative: Sequence[str] | None, device: torch.device) -> tuple[Cond | None, Cond | None]:
        """(the condition, classifier-free guidance's reference: the null condition or the negative prompts)."""
        if negative is not None:
            raise VdError(f"--negative-prompt: this model was trained with conditioning: {self.name}, not text; "
                          "a negative prompt needs a model trained from a text recipe (recipes/mnist_text.yaml)")
        return self.encode(requests, device), self.encode([self.null()] * len(requests), device)

    def parse(self, spec: str | None, prompts: list[str] | None, negative: str | None, single: bool = False) -> Parsed:
        """--class (``spec``: '7', 'seven', '3,7', 'all', 'none'), --prompt and --negative-prompt."""
        raise NotImplementedError

    def text_encoder(self, option: str = "--prompt") -> TextEncoder:
        """The text tower, for what only a text model has (attention to the words of a prompt)."""
        raise VdError(f"{option}: this model was trained with conditioning: {self.name}, not text; "
                      "it needs a model trained from a text recipe (recipes/mnist_text.yaml)")

    def example(self) -> str:
        """An option that asks for something, for hints: ``--class 3``."""
        return "--class 3"

    def next_hint(self, prompts: list[str] | None = None) -> str:
        """What ``vd sample`` should be told after training (``prompts``: the recipe's sample.prompts)."""
        return "--class all"

    def warnings(self, requests: Sequence, negative: str | None = None) -> list[str]:
        """Lines a user should see about a request before sampling (words a tokenizer ignores)."""
        return []

    # --- training -------------------------------------------------------------------------

    def column(self, train_set) -> torch.Tensor:
        """The training data's condition column: the labels (a text model's: the images' indices)."""
        return train_set.labels

    def training(self, rows: torch.Tensor, drop_prob: float, device: torch.device) -> Cond | None:
        """One step's condition for its rows of ``column``, a ``drop_prob`` share dropped to the
        null condition (the unconditional model that guidance extrapolates from). Its random draws
        come from the step's seeded global RNG, after the latent noise and before the loss's."""
        return None

    def grid_rows(self, prompts: list[str] | None) -> tuple[Request, Request, list[str]]:
        """(the conditional rows, the unconditional rows, every row's name) of the training grids."""
        raise NotImplementedError


def _items(requests: Sequence) -> list:
    return requests.tolist() if isinstance(requests, torch.Tensor) else list(requests)


class ClassLabels(Conditioning):
    """``conditioning: class``: a label table of the classes plus the null class."""

    name = "class"

    @classmethod
    def denoiser_inputs(cls, meta):
        return {"num_classes": len(meta["data"]["classes"])}

    def encode(self, requests: Sequence, device: torch.device) -> Cond:
        return Cond(labels=torch.as_tensor(_items(requests), dtype=torch.long).to(device))

    def parse(self, spec, prompts, negative, single=False) -> Parsed:
        _no_text(self.name, prompts, negative)
        spec = "all" if spec is None else spec
        if spec.strip().lower() == "none":
            return Parsed([self.null_class], ["unconditional"], True)
        labels = parse_classes(spec, self.classes)
        if single and len(labels) > 1:
            raise VdError(f"--class {spec}: give one class here")
        return Parsed(labels, [self.classes[c] for c in labels], False)

    def training(self, rows, drop_prob, device) -> Cond:
        drop = torch.rand(rows.shape, device=rows.device) < drop_prob
        return Cond(labels=torch.where(drop, torch.full_like(rows, self.null_class), rows))  # the null class teaches the unconditional model

    def grid_rows(self, prompts):
        shown = list(range(min(self.null_class, 10)))
        return shown, [self.null_class], [self.classes[c] for c in shown] + ["unconditional"]


class Unconditional(ClassLabels):
    """``conditioning: none``: a denoiser without a label input; requests only count the images."""

    name = "none"

    @classmethod
    def denoiser_inputs(cls, meta):
        return {"num_classes": 0}

    def is_null(self, requests, negative=None) -> bool:
        return negative is None

    def encode(self, requests, device) -> None:
        return None

    def parse(self, spec, prompts, negative, single=False) -> Parsed:
        _no_text(self.name, prompts, negative)
        if spec is not None and spec.strip().lower() != "none":
            raise VdError(f"--class {spec}: this model was trained without classes (conditioning: none); leave --class out")
        return Parsed([self.null_class], ["unconditional"], True)

    def example(self) -> str:
        return ""

    def of_class(self, label):
        return self.null_class

    def next_hint(self, prompts=None) -> str:
        return "--n 16"

    def training(self, rows, drop_prob, device) -> None:
        return None

    def grid_rows(self, prompts):
        return [], [self.null_class] * 8, ["unconditional"] + [""] * 7


class Text(Conditioning):
    """``conditioning: text``: the frozen CLIP text tower's token states, through cross-attention;
    the empty prompt (the caption dropped in training) is the unconditional model."""

    name = "text"
    reads_text = True

    def __init__(self, classes, text: TextEncoder | None = None, captioner=None):
        super().__init__(classes, text, captioner)
        self._cache = TextCache(text) if text is not None else None

    @classmethod
    def denoiser_inputs(cls, meta):
        return {"num_classes": 0, "context_dim": meta["text"]["dim"]}

    def null(self) -> str:
        return ""

    def of_class(self, label):
        return self.classes[label]  # the class name as the prompt

    def repeat(self, requests, n):
        return [str(r) for r in requests for _ in range(n)]

    def encode(self, requests, device) -> Cond:
        states, pooled, mask = self.text.encode([str(r) for r in requests])  # (B, L, D), (B, D), (B, L)
        return Cond(states=states, mask=mask, pooled=pooled).to(device)

    def reference(self, requests, negative, device):
        prompts = [str(r) for r in requests]
        negative = [""] * len(prompts) if negative is None else list(negative)
        if len(negative) != len(prompts):
            raise ValueError(f"{len(negative)} negative prompts for {len(prompts)} prompts")
        both = self.encode(prompts + negative, device)  # encoded together: one padded length
        return both[: len(prompts)], both[len(prompts):]

    def parse(self, spec, prompts, negative, single=False) -> Parsed:
        """--class items become prompts as typed ('7', 'seven'; 'all': every class name; 'none': the
        empty prompt); --prompt and --class together are refused."""
        if prompts and spec is not None:
            raise VdError(f"--prompt and --class {spec}: give one of them (on a text model --class {spec} means --prompt {spec})")
        if prompts:
            parsed = Parsed(list(prompts), [p or "unconditional" for p in prompts], all(p == "" for p in prompts) and negative is None)
        else:
            spec = "all" if spec is None else spec
            if spec.strip().lower() == "none":
                parsed = Parsed([""], ["unconditional"], negative is None)
            elif spec.strip().lower() == "all":
                parsed = Parsed(list(self.classes), list(self.classes), False)
            else:
                parse_classes(spec, self.classes)  # a typo is still an error that names the nearest class
                typed = [p.strip() for p in spec.split(",") if p.strip()]
                parsed = Parsed(typed, typed, False)
        if single and len(parsed.requests) > 1:
            raise VdError(f"--{'prompt' if spec is None else 'class ' + spec}: give one here")
        return parsed

    def text_encoder(self, option: str = "--prompt") -> TextEncoder:
        return self.text

    def example(self) -> str:
        return f"--prompt {_quote(self.classes[min(3, len(self.classes) - 1)])}"

    def next_hint(self, prompts=None) -> str:
        """Two of the model's own prompts: the recipe's, else the folder's own captions, else class names."""
        own = getattr(self.captioner, "texts", None)
        shown = list(prompts or [t[0] for t in own or [] if t] or self.classes)[:2]
        return " ".join(f"--prompt {_quote(p)}" for p in shown)

    def warnings(self, requests, negative=None) -> list[str]:
        lines = []
        for prompt in dict.fromkeys([*map(str, requests), *([negative] if negative else [])]):
            unknown = self.text.unknown(prompt)
            if unknown:
                lines.append(f"note: the prompt {_quote(prompt)} has words this model never saw, which it reads as unknown: "
                             + ", ".join(unknown))
        return lines

    def column(self, train_set) -> torch.Tensor:
        return torch.arange(len(train_set))  # captions are found by the image's index

    def training(self, rows, drop_prob, device) -> Cond:
        captions = draw_captions(self.captioner, rows)
        drop = (torch.rand(len(captions)) < drop_prob).tolist()  # the empty prompt teaches the unconditional model
        return self._cache(["" if d else c for c, d in zip(captions, drop)]).to(device)

    def grid_rows(self, prompts):
        shown = list(prompts or self.classes[:10])
        return shown, [""], shown + ["unconditional"]


def _no_text(name: str, prompts, negative) -> None:
    if prompts or negative is not None:
        option = "--prompt" if prompts else "--negative-prompt"
        raise VdError(f"{option}: this model was trained with conditioning: {name}, not text; "
                      f"use --class, or a model trained from a text recipe (recipes/mnist_text.yaml)")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


STRATEGIES: dict[str, type[Conditioning]] = {c.name: c for c in (ClassLabels, Unconditional, Text)}
assert tuple(STRATEGIES) == get_args(ConditioningKind), "one strategy per conditioning setting"


def strategy(name: str, classes: list[str], text: TextEncoder | None = None, captioner=None) -> Conditioning:
    """The strategy of a recipe's (or a checkpoint's) ``conditioning`` setting."""
    return STRATEGIES[name](classes, text, captioner)
