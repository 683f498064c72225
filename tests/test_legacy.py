"""Checkpoints written before the conditioning redesign still load and sample the same images.

``tests/data/legacy/`` holds tiny LDMs of every kind (class with an autoguidance guide, none, text,
a ControlNet on the class model) and the images ``vd sample`` drew from them, all made by the code
of commit 280dded (``tests/data/make_legacy.py`` says how). The current code must draw the same
pixels through the same commands: guidance, autoguidance, negative prompts, image-to-image and
control all reach the denoiser as they did.
"""

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

LEGACY = Path(__file__).parent / "data" / "legacy"
sys.path.insert(0, str(LEGACY.parent))

import make_legacy  # noqa: E402


def test_checkpoints_from_before_the_redesign_sample_the_same_images(tmp_path, monkeypatch):
    from test_cli import ok

    monkeypatch.setattr(make_legacy, "vd", lambda *args, cwd: ok(*args))  # in this process: the same commands, faster
    monkeypatch.chdir(tmp_path)
    expected = load_file(str(LEGACY / "samples.safetensors"))
    checkpoints = {name: LEGACY / f"{name}.safetensors" for name in [*make_legacy.MODELS, "controlnet"]}
    made = make_legacy.sample_all(checkpoints, tmp_path)
    assert sorted(made) == sorted(expected)
    differ = [name for name in expected if not np.array_equal(made[name], expected[name])]
    assert not differ, f"{len(differ)} of {len(expected)} images differ, e.g. {differ[:3]}"
