"""The ControlNet commands: ``vd control`` (a control map from an image), ``vd train-controlnet``,
and what ``sample`` and ``inpaint`` share to be steered by one (``steer``)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from vdcli.cli.app import command, duration, say, train_command
from vdcli.cli.options import DataRoot, check_choice, check_data_root, check_input, check_out
from vdcli.errors import VdError


def load_control_maps(model, control: list[str], control_type: str | None, data_root) -> list:
    """The control maps (uint8 [1, H, W] each) the --control options name, at the base's image size.

    A map file far smaller than the model's input is refused: under a quarter of its side (5x5 for
    32x32) too few pixels are left to steer anything, and padding or stretching it is never what the
    user meant. One under three quarters (a 16x16 drawing for a 32x32 model) may be meant and is
    used with a one-line warning of what happens to it; 28x28 for 32x32 is the MNIST padding itself.
    """
    from vdcli.controls import control_map
    from vdcli.data import fit_images, is_reference, load_input

    maps = []
    for ref in control:
        if is_reference(ref):  # a dataset image, fitted as in training
            image, _ = load_input(ref, model.image_size, None, data_root)
        else:
            image, _ = load_input(ref, None, None, data_root)
            _check_control_size(ref, image.shape[-2:], model.image_size)
            image = fit_images(image[None], model.image_size, None)[0]
        kind = control_type or (model.control if is_reference(ref) else None)  # a dataset image is not a map
        maps.append(control_map(image, kind) if kind else image.float().mean(0, keepdim=True).round().byte())
    return maps


def _check_control_size(ref: str, shape, size: int) -> None:
    h, w = shape
    side = min(h, w)
    fix = f"draw or resize it to {size}x{size} (vd control IMAGE --size {size} makes one from an image)"
    if 4 * side < size:
        raise VdError(f"--control {ref} is {w}x{h}, far smaller than the model's {size}x{size} input; {fix}")
    if 4 * side < 3 * size:
        what = f"centred on a black {size}x{size}" if h == w else f"stretched to cover {size}x{size}"
        typer.echo(f"warning: --control {ref} is {w}x{h}, smaller than the model's {size}x{size}: it is {what}; "
                   f"for a map that steers the whole image, {fix}", err=True)


def steer(controlnet: str, where, compile: bool = False):
    """(its checkpoint, the ControlNet model, how it was found) from --controlnet."""
    from vdcli.checkpoint import load_checkpoint
    from vdcli.runs import find_checkpoint
    from vdcli.tasks.controlnet import load_controlled

    path, found = find_checkpoint(controlnet, "controlnet")
    ckpt = load_checkpoint(path, "controlnet")
    return ckpt, load_controlled(ckpt, where, compile), found


@train_command("controlnet", "train-controlnet", """Train a ControlNet on a trained LDM: generation that follows an edge map, a scribble or a depth-like map.

    Example: [bold]vd train-controlnet recipes/mnist_controlnet.yaml[/]  then  [bold]vd sample --controlnet runs/mnist_controlnet/latest --control mnist:test:7 --class all --n 1[/]

    The base LDM (recipe key base) stays frozen; a trainable copy of its encoder reads the control
    map and adds to its skip connections through zero-initialised convolutions, so training starts
    from exactly the base. Writes runs/<recipe>/<time>/: checkpoint.safetensors (with the base: sample
    needs nothing else), controls.safetensors (the cached maps), samples_<step>.png (per row a test
    image's map, then samples of its class), loss.png.
    """)
def _report_controlnet(summary) -> None:
    say(
        f"[bold]ControlNet trained: {summary.steps} steps in {duration(summary.seconds)}, final loss {summary.loss:.4f}[/]",
        f"wrote {summary.run.dir}/: " + ", ".join(p.name for p in summary.files if p.exists()),
        f"next: vd sample --controlnet {summary.run.dir} {summary.next_hint}",
    )


@command("control")
def control_cmd(
    image: Annotated[str, typer.Argument(help="The image: a file or a dataset reference such as mnist:test:7.")],
    type_: Annotated[str, typer.Option("--type", help="edges (Canny), scribble (the strokes' skeleton) or depth (distance inside the strokes).")] = "scribble",
    size: Annotated[Optional[int], typer.Option(help="Resize to this side first (default: the image's own size; 32 for an MNIST LDM).", min=4)] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/control"),
    data_root: DataRoot = None,
) -> None:
    """Compute a control map from an image, to look at, edit, or pass to vd sample --control.

    Example: [bold]vd control mnist:test:7 --type scribble --size 32[/]

    Writes <type>.png (the map: white = the feature) and <type>_beside.png (the image and its map,
    enlarged). A map drawn by hand (white strokes on black) works the same way.
    """
    import torch

    from vdcli import images
    from vdcli.controls import CONTROLS, control_map
    from vdcli.data import load_input

    check_input(image, "IMAGE")
    check_choice(type_, "--type", CONTROLS)
    check_out(out)
    check_data_root(data_root)
    pixels, what = load_input(image, size, None, data_root)
    mapped = control_map(pixels, type_)
    out.mkdir(parents=True, exist_ok=True)
    written = [images.save(images.to_pil(mapped), out / f"{type_}.png")]
    gray = pixels.float().mean(0, keepdim=True).round().byte()
    written.append(images.save(images.hstack([images.grid(torch.stack([gray, mapped]), nrow=2, pad=4)], [f"{what}: {type_}"]),
                               out / f"{type_}_beside.png"))
    say(f"{what}: {type_} map, {mapped.shape[-1]}x{mapped.shape[-2]}, {int((mapped > 127).sum())} pixels on",
        "wrote " + ", ".join(str(p) for p in written))
