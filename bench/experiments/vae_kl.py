"""What the VAE's KL weight does to the latent space a denoiser has to learn (issue 14).

    VD_DATA_ROOT=../shared/datasets python bench/experiments/vae_kl.py RUN_OR_VAE [RUN_OR_VAE ...]

For each VAE (a ``train-vae`` run, or an LDM run's ``vae/``), on 1000 MNIST test digits:

- ``psnr``: the reconstructions' PSNR, and ``recon_confident``: the share of them the judge
  (bench/classifier.py) classifies with probability >= 0.9 (real digits: 96.4%);
- ``sigma``: the posterior's standard deviation as a fraction of the latent spread, sqrt(exp(logvar))
  / LatentNorm.std averaged over elements: the noise the decoder was trained to absorb, in the
  standardised units the denoiser works in;
- ``robust@d``: the judge's confident share of decode(mu + d * std * n), n ~ N(0, I): how far a
  denoiser's sample may land from a real latent and still decode to a clear digit.

Prints one JSON line per VAE; records nothing.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: common, classifier, ldm_quality, peers
import torch  # noqa: E402
from common import confident_share, data_root, judge, load_judge  # noqa: E402

from vdcli.checkpoint import load_checkpoint  # noqa: E402
from vdcli.data import load_split, to_uint8  # noqa: E402
from vdcli.models.vae import LatentNorm  # noqa: E402
from vdcli.recipe import DataConfig  # noqa: E402
from vdcli.runs import find_checkpoint  # noqa: E402
from vdcli.tasks.vae import encode_all, load_vae, reconstruction_error  # noqa: E402


def main() -> None:
    torch.set_grad_enabled(False)
    cpu = torch.device("cpu")
    data = DataConfig(name="mnist", image_size=32)
    train = load_split(data, "train", data_root())
    test = load_split(data, "test", data_root())
    probe = test.take(torch.arange(1000))
    judge_net = load_judge()

    def confident(images_uint8: torch.Tensor) -> float:
        return round(confident_share(judge(judge_net, images_uint8)[0]), 4)

    for name in sys.argv[1:]:
        path = Path(name)
        ckpt = load_checkpoint(find_checkpoint(path / "vae" if (path / "vae").is_dir() else path, "vae")[0], "vae")
        vae, _ = load_vae(ckpt, cpu)
        norm = LatentNorm.fit(*encode_all(vae, train.take(torch.arange(20_000)), cpu))
        mean, logvar = encode_all(vae, probe, cpu)
        recon = to_uint8(vae.decode(mean))
        _, psnr = reconstruction_error(vae, probe, cpu)
        g = torch.Generator().manual_seed(0)
        row = {
            "vae": str(path),
            "kl_weight": ckpt.meta.get("recipe", {}).get("train", {}).get("kl_weight", ckpt.meta.get("train", {}).get("kl_weight")),
            "psnr": round(psnr, 2),
            "recon_confident": confident(recon),
            "sigma": round(((0.5 * logvar).exp() / norm.std).mean().item(), 4),
        }
        for d in (0.25, 0.5):
            noisy = mean + d * norm.std * torch.randn(mean.shape, generator=g)
            row[f"robust@{d}"] = confident(to_uint8(vae.decode(noisy)))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        raise SystemExit(__doc__)
    main()
