"""Sampling-side variants of autoguided unconditional samples: a guidance interval, other samplers.

    VD_DATA_ROOT=../shared/datasets python bench/experiments/uncond_variants.py RUN 3:0:999:dpmpp-2m:10:0 3:0:600:dpmpp-2m:10:0

Each variant is W:T_LO:T_HI:SAMPLER:STEPS:ETA: autoguidance at w = W for timesteps T_LO <= t <= T_HI
(the model alone elsewhere; Kynkäänniemi et al. 2024 apply guidance in a limited interval), with
that sampler. 500 unconditional samples of RUN from one fixed seed, judged by bench/classifier.py
as bench/ldm_quality.py does: confident share (top probability >= 0.9), class histogram, FD.
Prints one JSON line per variant; records nothing.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: common, classifier, ldm_quality, peers
import torch  # noqa: E402
from common import data_root, judge, load_judge  # noqa: E402
from ldm_quality import scores  # noqa: E402

from vdcli.checkpoint import load_checkpoint  # noqa: E402
from vdcli.data import load_split  # noqa: E402
from vdcli.conditioning import guided  # noqa: E402
from vdcli.diffusion import sample  # noqa: E402
from vdcli.recipe import DataConfig  # noqa: E402
from vdcli.runs import find_checkpoint  # noqa: E402
from vdcli.tasks import ldm as L  # noqa: E402


def main() -> None:
    run = sys.argv[1]
    variants = sys.argv[2:]
    cpu = torch.device("cpu")
    ldm = L.load_ldm(load_checkpoint(find_checkpoint(run, "ldm")[0], "ldm"), cpu)
    model = load_judge()
    torch.set_grad_enabled(False)
    test = load_split(DataConfig(name="mnist", image_size=28), "test", data_root())
    _, test_feats = judge(model, test.images)
    n = 500
    cond = ldm.conditioning.encode([ldm.conditioning.null()] * n, cpu)
    net = guided(ldm.denoiser, cond, 1.0)
    for v in variants:  # w:lo:hi:sampler:steps:eta
        w, lo, hi, sampler, steps, eta = v.split(":")
        w, lo, hi, steps, eta = float(w), int(lo), int(hi), int(steps), float(eta)
        ag = guided(ldm.denoiser, cond, w, guide=ldm.guide)
        def fn(x, t, ag=ag, lo=lo, hi=hi):
            tt = int(t.flatten()[0])
            return ag(x, t) if lo <= tt <= hi else net(x, t)
        g = torch.Generator().manual_seed(0)
        noise = torch.randn((n, *ldm.latent_shape), generator=g)
        samples = ldm.decode(sample(fn, noise, ldm.schedule, sampler, steps, eta, generator=g))
        print(json.dumps({"variant": v, **scores(model, samples, test_feats)[0]}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        raise SystemExit(__doc__)
    main()
