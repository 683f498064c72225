"""The latent-space commands: ``vd train-vae``, ``vd interpolate``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from vdcli.cli.app import command, duration, say, train_command
from vdcli.cli.options import DataRoot, Device, check_choice, check_data_root, check_device, check_input, check_out, check_steps
from vdcli.errors import VdError


@train_command("vae", "train-vae", """Train the KL-regularised autoencoder that maps images to a small latent grid.

    Example: [bold]vd train-vae recipes/mnist_vae.yaml[/]

    Writes runs/<recipe>/<time>/: checkpoint.safetensors (with the latent scale factor),
    reconstructions.png (originals above reconstructions), samples.png (decoded prior samples),
    latent_map.png (the test latents in 2-D by PCA, coloured by class), loss.png.
    """)
def _report_vae(summary) -> None:
    say(
        f"[bold]test reconstruction MSE {summary.mse:.5f}, PSNR {summary.psnr:.2f} dB[/]; latent scale factor {summary.scale_factor:.4f}",
        f"{summary.steps} steps in {duration(summary.seconds)}; wrote {summary.run.dir}/: " + ", ".join(p.name for p in summary.files if p.exists()),
    )


@command("interpolate")
def interpolate_cmd(
    a: Annotated[str, typer.Argument(help="First image: a file or a dataset reference such as mnist:test:3.")],
    b: Annotated[str, typer.Argument(help="Second image.")],
    checkpoint: Annotated[Optional[str], typer.Option(help="An LDM, to walk through its noise space via DDIM inversion (the default when there is an LDM run: its middle frames stay digits most often, bench/RESULTS.md), or a VAE, to walk through its latent space (default without an LDM run: the newest VAE run).")] = None,
    frames: Annotated[int, typer.Option(help="Frames from A to B, both included.", min=2)] = 10,
    mode: Annotated[str, typer.Option(help="VAE latent path: slerp or lerp (an LDM's noises are always slerped).")] = "slerp",
    steps: Annotated[int, typer.Option(help="LDM only: DDIM steps for inversion and decoding.", min=1)] = 50,
    fps: Annotated[float, typer.Option(help="GIF frames per second.", min=0.1)] = 4.0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/interpolate"),
    device: Device = "auto",
    data_root: DataRoot = None,
) -> None:
    """Walk between two images in pixel space and in latent space, side by side.

    Example: [bold]vd interpolate mnist:test:3 mnist:test:2 --frames 12[/]

    Writes interpolation.png (row 1: the pixel blend; row 2: the decoded latent path) and
    interpolation.gif (both, animated side by side). With an LDM checkpoint (the default when
    there is an LDM run) the latent path runs through noise: DDIM inversion of both images,
    slerp, DDIM decoding; on 40 pairs of test digits its middle frames are confident digits 77%
    of the time, against 62% for the VAE's latent path and 51% for the pixel blend.
    """
    from vdcli.checkpoint import KINDS, load_checkpoint
    from vdcli.data import load_input
    from vdcli.runs import find_checkpoint
    from vdcli.tasks import ldm, vae

    check_input(a, "A")
    check_input(b, "B")
    check_input(checkpoint, "--checkpoint")
    check_choice(mode, "--mode", ("slerp", "lerp"))
    check_out(out)
    check_data_root(data_root)
    where = check_device(device)
    if checkpoint is None:  # the path that keeps digits best, when the runs have what it needs
        try:
            path, found = find_checkpoint(None, "ldm")
        except VdError:
            path, found = find_checkpoint(None, "vae")
    else:
        path, found = find_checkpoint(checkpoint, "vae")
    ckpt = load_checkpoint(path)
    if ckpt.kind not in ("vae", "ldm"):
        raise VdError(f"{path} is {KINDS[ckpt.kind]}, but this command needs {KINDS['vae']} or {KINDS['ldm']}")
    spec = ckpt.meta["data"]
    (xa, what_a), (xb, what_b) = (load_input(x, spec["image_size"], spec["channels"], data_root, spec.get("background", "white")) for x in (a, b))
    if ckpt.kind == "vae":
        model, _ = vae.load_vae(ckpt, where)
        result, how = vae.interpolate(model, xa, xb, frames, mode), f"{mode} in the VAE's latent space"
    else:
        model = ldm.load_ldm(ckpt, where)
        check_steps(steps, model.schedule.T)
        result, how = ldm.interpolate(model, xa, xb, frames, steps), f"slerp between DDIM-{steps} inversions"
    from vdcli.images import file_hash

    made = dict(made_by="interpolate", checkpoint=str(path), checkpoint_sha256=file_hash(path), a=a, b=b, frames=frames,
                mode=mode if ckpt.kind == "vae" else None, steps=steps if ckpt.kind == "ldm" else None)
    files = vae.write_interpolation(result, out, fps, made)
    say(f"using {found}", f"{what_a} -> {what_b}: {frames} frames ({how})", f"wrote {', '.join(str(p) for p in files)}")
