"""Regenerate the README's pictures from trained runs, with the same commands a reader would type.

    VD_DATA_ROOT=../shared/datasets python docs/make_images.py [--ldm bench/runs/mnist_latent/latest] [--vit RUN] [--text RUN] [--controlnet RUN]
    VD_DATA_ROOT=../shared/datasets python docs/make_images.py --ldm RUN --sweeps-only   # only the sweep grids

Each picture is written by a `vd` command into a scratch folder and copied into docs/. Pictures
whose run is not given (the ViT's attention map and confusion matrix need `--vit`) are left as
they are, and the script says so.
"""

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

DOCS = Path(__file__).parent


def vd(*args: str) -> None:
    print("$ vd", " ".join(args), flush=True)
    subprocess.run(["vd", *args, "--device", "cpu"] if args[0] != "patchify" else ["vd", *args], check=True)


def latent_map(ldm_run: str, out: Path) -> None:
    """The LDM's VAE's latent map, as train-vae writes it (tasks.vae.latent_map), on the MNIST test set."""
    import torch

    from vdcli.checkpoint import load_checkpoint
    from vdcli.data import load_split
    from vdcli.recipe import DataConfig
    from vdcli.runs import find_checkpoint
    from vdcli.tasks.vae import latent_map as draw
    from vdcli.tasks.ldm import load_ldm

    ckpt = load_checkpoint(find_checkpoint(ldm_run, "ldm")[0], "ldm")
    ldm = load_ldm(ckpt, torch.device("cpu"))
    test = load_split(DataConfig(**ckpt.meta["recipe"]["data"]), "test")
    print(f"latent map of {ldm_run}'s VAE -> {out}", flush=True)
    draw(ldm.vae, test, out)


def autoguidance(ldm_run: str, out: Path, n: int = 12) -> None:
    """The same noises sampled unconditionally by the model alone (w = 1) and autoguided (the
    recipe's w), two rows each: what `vd sample --class none` with and without --guidance 1 draws."""
    import torch

    from vdcli import images
    from vdcli.checkpoint import load_checkpoint
    from vdcli.runs import find_checkpoint
    from vdcli.tasks.ldm import generate, load_ldm

    ldm = load_ldm(load_checkpoint(find_checkpoint(ldm_run, "ldm")[0], "ldm"), torch.device("cpu"))
    d, w = ldm.defaults, ldm.autoguidance(None)
    null = torch.full((2 * n,), ldm.null_class)
    rows = [generate(ldm, null, sampler=d.sampler, steps=d.steps, guidance=g, generator=torch.Generator().manual_seed(0))[0]
            for g in (1.0, w)]
    picture = images.grid(torch.cat(rows), nrow=n)
    print(f"unconditional samples of {ldm_run} at w = 1 and w = {w:g} -> {out}", flush=True)
    images.save(images.with_row_labels(picture, ["alone (w = 1)", "", f"autoguided (w = {w:g})", ""], picture.height // 4), out)


def sweeps(ldm_run: str, scratch: Path) -> None:
    """The sweep grids (vd sample --sweep): what guidance w does at each number of steps, and how the
    samplers converge with steps, on one digit from one noise; every cell is a plain vd sample."""
    vd("sample", "--checkpoint", ldm_run, "--class", "7", "--sampler", "ddim", "--sweep", "guidance=1,2,3,5,8",
       "--sweep", "steps=5,10,20,50", "--out", str(scratch / "sweep_guidance"))
    shutil.copy(scratch / "sweep_guidance" / "sweep.png", DOCS / "sweep_guidance_steps.png")
    vd("sample", "--checkpoint", ldm_run, "--class", "7", "--sweep", "sampler=ddim,dpmpp-2m,euler-a,ddpm",
       "--sweep", "steps=5,10,20,50", "--out", str(scratch / "sweep_samplers"))
    shutil.copy(scratch / "sweep_samplers" / "sweep.png", DOCS / "sweep_sampler_steps.png")


def vit_pictures(vit_run: str, scratch: Path) -> None:
    """What the ViT looks at (attention of the class token, rollout) and how alike its learned
    position embeddings are (Dosovitskiy et al. 2021, Fig. 7 centre)."""
    vd("attn-map", "mnist:test:42", "--mode", "both", "--checkpoint", vit_run, "--out", str(scratch / "attn"))
    shutil.copy(scratch / "attn" / "attention.png", DOCS / "attention.png")  # the overview; the per-head files sit beside it
    vd("attn-map", "--positions", "--checkpoint", vit_run, "--out", str(scratch / "positions"))
    shutil.copy(scratch / "positions" / "position_similarity.png", DOCS / "position_similarity.png")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ldm", default="bench/runs/mnist_latent/latest")
    parser.add_argument("--vit", default=None)
    parser.add_argument("--text", default=None, help="a text LDM run (recipes/mnist_text.yaml)")
    parser.add_argument("--controlnet", default=None, help="a ControlNet run (recipes/mnist_controlnet.yaml)")
    parser.add_argument("--sweeps-only", action="store_true", help="draw only the sweep grids of --ldm")
    parser.add_argument("--vit-only", action="store_true", help="draw only the pictures of --vit")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="vd-docs-"))
    if args.vit_only:
        vit_pictures(args.vit, scratch)
        print(f"wrote docs/attention.png and docs/position_similarity.png (scratch files in {scratch})")
        return
    if args.sweeps_only:
        sweeps(args.ldm, scratch)
        print(f"wrote docs/sweep_guidance_steps.png and docs/sweep_sampler_steps.png (scratch files in {scratch})")
        return

    vd("patchify", "mnist:test:0", "--patch", "4", "--out", str(scratch / "patchify"))
    shutil.copy(scratch / "patchify" / "grid.png", DOCS / "patchify_grid.png")
    shutil.copy(scratch / "patchify" / "sequence.png", DOCS / "patchify_sequence.png")

    vd("sample", "--checkpoint", args.ldm, "--class", "all", "--n", "8", "--out", str(scratch / "sample"))
    shutil.copy(scratch / "sample" / "grid.png", DOCS / "ldm_samples.png")
    vd("sample", "--checkpoint", args.ldm, "--class", "seven", "--n", "4", "--trajectory", "--out", str(scratch / "trajectory"))
    shutil.copy(scratch / "trajectory" / "trajectory.gif", DOCS / "ldm_trajectory.gif")
    vd("inpaint", "mnist:test:0", "--mask", "box:0,16,32,32", "--class", "2", "--n", "6", "--checkpoint", args.ldm,
       "--out", str(scratch / "inpaint"))
    shutil.copy(scratch / "inpaint" / "inpaint.png", DOCS / "inpaint.png")

    vd("sample", "--checkpoint", args.ldm, "--init", "mnist:test:0", "--class", "3", "--strength", "0.3,0.5,0.7,0.9,1",
       "--n", "4", "--out", str(scratch / "img2img"))
    shutil.copy(scratch / "img2img" / "grid.png", DOCS / "image_to_image.png")
    vd("diffuse", "mnist:test:0", "--checkpoint", args.ldm, "--out", str(scratch / "diffuse"))
    shutil.copy(scratch / "diffuse" / "forward_process.png", DOCS / "forward_process.png")
    shutil.copy(scratch / "diffuse" / "schedule.png", DOCS / "schedule.png")
    latent_map(args.ldm, DOCS / "latent_map.png")  # what train-vae draws, for the LDM's own VAE
    autoguidance(args.ldm, DOCS / "autoguidance.png")
    sweeps(args.ldm, scratch)
    if args.text:
        vd("sample", "--checkpoint", args.text, "--prompt", "a bold seven", "--prompt", "a thin seven",
           "--prompt", "a 2 leaning left", "--prompt", "a 2 leaning right", "--prompt", "a small eight",
           "--prompt", "a large eight", "--n", "8", "--out", str(scratch / "text"))
        shutil.copy(scratch / "text" / "grid.png", DOCS / "text_samples.png")
        vd("attn-map", "--prompt", "a bold seven", "--checkpoint", args.text, "--out", str(scratch / "words"))
        shutil.copy(next((scratch / "words").glob("*.png")), DOCS / "prompt_attention.png")
        vd("attn-map", "--text", "a bold seven leaning right", "--checkpoint", args.text, "--out", str(scratch / "self"))
        shutil.copy(scratch / "self" / "text_attention.png", DOCS / "text_attention.png")
    else:
        print("no --text run: docs/text_samples.png, prompt_attention.png and text_attention.png left as they are")

    if args.controlnet:
        vd("sample", "--controlnet", args.controlnet, "--control", "mnist:test:0", "--control", "mnist:test:2",
           "--control", "mnist:test:3", "--class", "all", "--n", "1", "--out", str(scratch / "control"))
        shutil.copy(scratch / "control" / "grid.png", DOCS / "controlnet.png")
    else:
        print("no --controlnet run: docs/controlnet.png left as it is")

    if args.vit:
        vit_pictures(args.vit, scratch)
    else:
        print("no --vit run: docs/attention.png, vit_confusion.png and position_similarity.png left as they are")
    # bench/inductive_bias.py trains 16 classifiers (~25 min or more); this redraws its latest rows only
    print("$ python bench/inductive_bias.py --plot-only", flush=True)
    subprocess.run(["python", str(DOCS.parent / "bench" / "inductive_bias.py"), "--plot-only", "--out", str(DOCS / "inductive_bias.png")],
                   check=True)
    print(f"wrote the pictures into {DOCS}/ (scratch files in {scratch})")


if __name__ == "__main__":
    main()
