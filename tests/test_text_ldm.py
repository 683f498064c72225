"""Text-conditioned latent diffusion: prompts, guidance, the empty prompt, and the commands end to end."""

import pytest
import torch

from vdcli.conditioning import TextCache, strategy
from vdcli.diffusion import DiffusionConfig, NoiseSchedule
from vdcli.errors import VdError
from vdcli.models.unet import UNet, UNetConfig
from vdcli.models.vae import AutoencoderKL, LatentNorm, VAEConfig
from vdcli.recipe import SampleConfig
from vdcli.tasks import ldm as tasks

D = 8


class WordEncoder:
    """A stand-in text encoder with the TextEncoder interface: one fixed random vector per word,
    an end token always present (so the empty prompt is one real token), padded to max_length."""

    dim, max_length = D, 6

    def __init__(self):
        self.calls = 0

    def tokens(self, prompt: str) -> list[str]:
        return prompt.split()[: self.max_length - 1] + ["<end>"]

    def _vector(self, word: str) -> torch.Tensor:
        return torch.randn(D, generator=torch.Generator().manual_seed(sum(map(ord, word)) + 31 * len(word)))

    def encode(self, prompts: list[str]):
        self.calls += 1
        states = torch.zeros(len(prompts), self.max_length, D)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            words = self.tokens(p)
            states[i, : len(words)] = torch.stack([self._vector(w) for w in words])
            mask[i, : len(words)] = True
        pooled = states[torch.arange(len(prompts)), mask.sum(1) - 1]  # the end token's state
        return states, pooled, mask


def _ldm(conditioning="text", seed=0) -> tasks.LDM:
    torch.manual_seed(seed)
    cfg = UNetConfig(channels=16, channel_mult=[1, 2], blocks_per_level=1, heads=4)
    net = UNet(cfg, 4, 2, 0 if conditioning == "text" else 3, context_dim=D if conditioning == "text" else None)
    with torch.no_grad():  # an untrained U-Net predicts exactly 0 and would hide every condition
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae = AutoencoderKL(VAEConfig(downsample=4, latent_channels=2, channels=8), 16, 1).eval()
    return tasks.LDM(net.eval(), vae, LatentNorm((2, 4, 4)), NoiseSchedule.from_config(DiffusionConfig(timesteps=50)),
                     strategy(conditioning, ["disk", "ring", "bar"], WordEncoder() if conditioning == "text" else None),
                     (2, 4, 4), SampleConfig(steps=3, guidance=3.0))


X, T = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([10, 40])


def test_the_empty_prompt_is_the_null_condition_so_guidance_leaves_it_alone():
    ldm = _ldm()
    assert ldm.conditioning.null() == ""
    plain = ldm.model_fn(["", ""], 1.0)(X, T)
    assert torch.allclose(ldm.model_fn(["", ""], 5.0)(X, T), plain, atol=1e-5)  # cond = uncond: any w gives the same


def test_guidance_extrapolates_from_the_empty_prompt_and_a_negative_prompt_replaces_it():
    ldm = _ldm()
    prompts = ["a bold disk", "ring"]
    cond, uncond = ldm.model_fn(prompts, 1.0)(X, T), ldm.model_fn(["", ""], 1.0)(X, T)
    assert torch.allclose(ldm.model_fn(prompts, 3.0)(X, T), uncond + 3 * (cond - uncond), atol=1e-5)
    neg = ldm.model_fn(["thin", "thin"], 1.0)(X, T)
    guided = ldm.model_fn(prompts, 3.0, negative=["thin", "thin"])(X, T)
    assert torch.allclose(guided, neg + 3 * (cond - neg), atol=1e-5)
    assert (cond[0] - cond[1]).abs().max() > 1e-4  # the prompt matters


def test_class_option_on_a_text_model_is_that_prompt():
    ldm = _ldm()
    assert ldm.request("2", None)[0] == ["2"]
    assert ldm.request("ring,0", None)[0] == ["ring", "0"]
    assert ldm.request(None, None)[0] == ["disk", "ring", "bar"]  # no option: every class name
    assert ldm.request("none", None) == ([""], ["unconditional"], 1.0)
    prompts, names, w = ldm.request(None, 2.0, prompts=["a bold disk", ""])
    assert prompts == ["a bold disk", ""] and names == ["a bold disk", "unconditional"] and w == 2.0
    with pytest.raises(VdError, match="did you mean 'ring'"):
        ldm.request("rng", None)


def test_a_class_model_refuses_prompts_in_one_line():
    ldm = _ldm("class")
    for kwargs in ({"prompts": ["a bold seven"]}, {"negative": "thin"}):
        with pytest.raises(VdError) as e:
            ldm.request(None, None, **kwargs)
        assert "conditioning: class, not text" in str(e.value) and "\n" not in str(e.value)


def test_generate_takes_one_prompt_per_image():
    ldm = _ldm()
    images, _ = tasks.generate(ldm, ["disk", "ring", "ring"], steps=2, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 16, 16) and images.dtype == torch.uint8
    assert ldm.conditioning.repeat(["a", "b"], 2) == ["a", "a", "b", "b"]
    assert _ldm("class").conditioning.repeat([0, 2], 2) == [0, 0, 2, 2]


def test_text_cache_encodes_each_caption_once_and_pads_to_one_length():
    text = WordEncoder()
    cache = TextCache(text)
    c = cache(["disk", "a ring", "disk"])
    states, pooled, mask = c.states, c.pooled, c.mask
    assert states.shape == (3, 6, D) and pooled.shape == (3, D) and mask.shape == (3, 6)
    assert torch.equal(states[0], states[2]) and mask[1].sum() == 3
    cache(["a ring", "disk"])
    assert text.calls == 1


def test_prompt_attention_gives_one_map_per_word_on_the_latent_grid():
    ldm = _ldm()
    result = tasks.prompt_attention(ldm, "a bold disk", steps=2)
    assert result.words == ["a", "bold", "disk", "<end>"]
    assert result.maps.shape == (4, 4, 4) and result.image.shape == (1, 16, 16)
    # each position's attention sums to 1 over the real tokens, so the maps sum to 1 everywhere
    assert torch.allclose(result.maps.sum(0), torch.ones(4, 4), atol=1e-4)
    with pytest.raises(VdError, match="not text"):
        tasks.prompt_attention(_ldm("class"), "disk")


# --- the commands end to end, on generated shapes ------------------------------------------------

TINY_TEXT = ["--set", "conditioning=text", "--set", "clip.model.embed_dim=16", "--set", "clip.model.image.patch_size=4",
             "--set", "clip.model.image.dim=32", "--set", "clip.model.image.depth=1", "--set", "clip.model.image.heads=2",
             "--set", "clip.model.text.dim=32", "--set", "clip.model.text.depth=1", "--set", "clip.model.text.heads=2",
             "--set", "clip.train.steps=10", "--set", "clip.train.batch_size=32", "--set", "clip.train.eval_every=10",
             "--set", "clip.train.warmup_steps=2", "--set", "clip.train.eval_images=64"]


def test_text_ldm_from_nothing_then_prompts_in_every_generating_command(tmp_path):
    from pathlib import Path

    from test_cli import TINY_LDM, ok, recipe, vd

    out = ok("train-ldm", recipe(tmp_path, "t", "ldm"), *TINY_LDM, *TINY_TEXT)
    assert "training CLIP first" in out and "denoiser trained" in out
    run = Path("runs/t/latest")
    assert (run / "clip" / "checkpoint.safetensors").is_file() and (run / "samples_000010.png").is_file()
    alone = tmp_path / "text.safetensors"
    (run / "checkpoint.safetensors").rename(alone)  # the checkpoint alone carries VAE, text tower and tokenizer
    import shutil

    shutil.rmtree(run.resolve())

    out = ok("sample", "--checkpoint", alone, "--prompt", "disk", "--prompt", "a square", "--n", 2, "--steps", 3, "--out", tmp_path / "s")
    assert "4 images" in out and (tmp_path / "s" / "grid.png").is_file()
    out = ok("sample", "--checkpoint", alone, "--class", "disk", "--n", 2, "--steps", 3, "--out", tmp_path / "c")
    assert "disk" in out  # --class on a text model is the prompt
    out = ok("sample", "--checkpoint", alone, "--init", "synthetic:test:0", "--prompt", "disk", "--strength", "0.5",
             "--n", 2, "--steps", 3, "--out", tmp_path / "i")
    assert "made anew 2 ways" in out
    out = ok("inpaint", "synthetic:test:1", "--mask", "box:0,8,16,16", "--checkpoint", alone, "--prompt", "a disk",
             "--n", 2, "--steps", 3, "--out", tmp_path / "f")
    assert "filled 128 of 256 pixels 2 ways" in out
    out = ok("attn-map", "--prompt", "a disk", "--checkpoint", alone, "--steps", 3, "--out", tmp_path / "a")
    assert any(p.suffix == ".png" for p in (tmp_path / "a").iterdir())

    result = vd("sample", "--checkpoint", alone, "--prompt", "disk", "--class", "disk")
    assert result.exit_code == 2 and "give one of them" in result.output

    # a word the tokenizer never saw is named in one line, before sampling; a prompt of 400 words samples
    # and its images get a short, safe file name (the full prompt is in the summary)
    out = ok("sample", "--checkpoint", alone, "--prompt", "a zebra disk", "--n", 1, "--steps", 2, "--out", tmp_path / "z")
    assert "never saw" in out and "zebra" in out and "1 images" in out
    long = " ".join(["a large red disk on a square"] * 60)
    out = ok("sample", "--checkpoint", alone, "--prompt", long, "--n", 2, "--steps", 2, "--out", tmp_path / "l")
    names = [f.name for f in (tmp_path / "l" / "images").iterdir()]
    assert len(names) == 2 and all(len(n) < 60 for n in names) and long[:40] in out.replace("\n", "")
