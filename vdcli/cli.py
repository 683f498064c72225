"""The ``vd`` command line: a thin shell over the library.

Each command parses its options, loads and validates its recipe or checkpoint, calls one
function from ``vdcli.tasks`` and prints a short summary. A ``VdError`` becomes one red line on
stderr and exit code 2 (``vd --debug ...`` shows the traceback); anything else is a bug and keeps
its traceback.
"""


import functools
import inspect
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from vdcli import __version__
from vdcli.errors import VdError

app = typer.Typer(
    name="vd",
    help="Vision transformers and latent diffusion: patchify, train, look inside, sample.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
_debug = {"on": bool(os.environ.get("VD_DEBUG"))}

# Options every command spells the same way.
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps; auto picks CUDA when present.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed (training: overrides train.seed). Same seed, same result on the CPU.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=3e-4 (repeatable).")]
DataRoot = Annotated[Optional[Path], typer.Option(help="Where datasets live (else $VD_DATA_ROOT, else ~/.cache/vd/data).")]
RunsDir = Annotated[Path, typer.Option("--out", help="Folder that holds the runs (runs/<recipe>/<time>/).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the newest run of this recipe from its last checkpoint.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vd {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of user errors too.")] = False,
) -> None:
    if debug:
        _debug["on"] = True


def _unwrap(doc: str) -> str:
    """Join the lines of each docstring paragraph, so that --help wraps them to the terminal."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def command(name: str):
    """Register a command whose user errors print as one line and exit 2 (130 when interrupted)."""

    def wrap(fn):
        fn.__doc__ = _unwrap(fn.__doc__)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt:  # outside a training loop (which saves first): nothing to lose
                if _debug["on"]:
                    raise
                typer.echo("interrupted", err=True)
                raise typer.Exit(130)
            except VdError as e:
                if _debug["on"]:
                    raise
                from vdcli.progress import console
                from vdcli.trainer import TrainingInterrupted

                err = console.__class__(stderr=True, highlight=False)
                if isinstance(e, TrainingInterrupted):
                    err.print(f"[yellow]{e}[/]; continue with: vd {' '.join(sys.argv[1:])} --resume", soft_wrap=True)
                    raise typer.Exit(130)
                err.print(f"[red]error:[/] {e}", soft_wrap=True, markup=True)
                raise typer.Exit(2)

        return app.command(name)(run)

    return wrap


def _say(*lines: str) -> None:
    from vdcli.progress import console

    for line in lines:
        console.print(line, soft_wrap=True)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def _prepare(kind: str, recipe: Path, sets, seed, resume: bool, out: Path):
    from vdcli.recipe import load_recipe, recipe_to_yaml
    from vdcli.runs import last_run, new_run

    overrides = list(sets or []) + ([f"train.seed={seed}"] if seed is not None else [])
    if resume:
        run = last_run(out, recipe.stem)
        validated = load_recipe(run.recipe, kind, overrides)
    else:
        validated = load_recipe(recipe, kind, overrides)
        run = new_run(out, recipe.stem)
    run.recipe.write_text(recipe_to_yaml(validated))
    return validated, run


def train_command(kind: str, name: str, doc: str):
    """Register ``vd <name> RECIPE``: the same options for every kind; ``report`` prints the summary."""
    label, example = {"vit": ("A ViT", "mnist_vit.yaml"), "vae": ("A VAE", "mnist_vae.yaml"), "ldm": ("An LDM", "mnist_latent.yaml")}[kind]

    def register(report):
        def train(
            recipe: Annotated[Path, typer.Argument(help=f"{label} recipe, e.g. recipes/{example}.", metavar="RECIPE")],
            set_: Sets = None,
            resume: Resume = False,
            out: RunsDir = Path("runs"),
            device: Device = "auto",
            seed: Seed = None,
            data_root: DataRoot = None,
            quiet: Quiet = False,
        ) -> None:
            import importlib

            from vdcli.device import pick_device

            task = importlib.import_module(f"vdcli.tasks.{kind}")
            validated, run = _prepare(kind, recipe, set_, seed, resume, out)
            report(task.train(validated, run, device=pick_device(device), data_root=data_root, resume=resume, quiet=quiet))

        train.__doc__ = doc
        train.__name__ = f"{kind}_train"
        command(name)(train)
        return report

    return register


# --- the ViT path ---------------------------------------------------------------------------


@command("patchify")
def patchify_cmd(
    image: Annotated[str, typer.Argument(help="An image file, or a dataset reference such as mnist:test:0.")],
    patch: Annotated[int, typer.Option(help="Patch side in pixels.", min=1)] = 16,
    size: Annotated[Optional[int], typer.Option(help="Resize (short side) and centre-crop to SIZE x SIZE first.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/patchify"),
    data_root: DataRoot = None,
) -> None:
    """Cut an image into ViT patches, row-major from the top left, and export the patch tensor.

    Example: [bold]vd patchify photo.jpg --size 224 --patch 16[/]  or  [bold]vd patchify mnist:test:0 --patch 7[/]

    Writes grid.png (patch grid, each patch numbered), sequence.png (the patches in the order the
    encoder reads them) and patches.safetensors ([N, C*P*P], values in [-1, 1]).
    """
    from vdcli.data import load_input
    from vdcli.tasks.vit import export_patches

    pixels, _ = load_input(image, size, None, data_root)
    result = export_patches(pixels, patch, out)
    c, h, w = pixels.shape
    _say(
        f"{image}: {w}x{h}, {c} channel(s) -> {result.rows}x{result.cols} = {result.shape[0]} patches of {patch}x{patch}",
        f"sequence: [{result.shape[0]}, {result.shape[1]}] = [N, C*P*P]; patch k is row k // {result.cols}, column k % {result.cols}",
        f"wrote {result.grid_png}, {result.sequence_png}, {result.tensor_path}",
    )


@train_command("vit", "train-vit", """Train a Vision Transformer classifier from a recipe.

    Example: [bold]vd train-vit recipes/mnist_vit.yaml --set train.steps=500[/]

    Writes runs/<recipe>/<time>/: checkpoint.safetensors, metrics.jsonl, loss.png,
    confusion.png and misclassified.png. Ctrl-C saves a checkpoint; --resume continues.
    """)
def _report_vit(summary) -> None:
    _say(
        f"[bold]test accuracy {summary.accuracy:.2%}[/] after {summary.steps} steps in {_duration(summary.seconds)}",
        f"wrote {summary.run.dir}/: " + ", ".join(p.name for p in summary.files if p.exists()),
    )


@command("attn-map")
def attn_map_cmd(
    image: Annotated[str, typer.Argument(help="An image file, or a dataset reference such as mnist:test:42.")],
    checkpoint: Annotated[Optional[str], typer.Option(help="A ViT checkpoint or run folder (default: the newest ViT run).")] = None,
    layer: Annotated[int, typer.Option(help="Layer whose heads to show; -1 is the last.")] = -1,
    head: Annotated[Optional[int], typer.Option(help="Only this head (default: all).")] = None,
    mode: Annotated[str, typer.Option(help="cls: per-head class-token attention; rollout: attention rollout; both.")] = "both",
    fusion: Annotated[str, typer.Option(help="Rollout head fusion: mean, max or min.")] = "mean",
    discard: Annotated[float, typer.Option(help="Rollout: drop this fraction of the weakest attention weights.", min=0.0, max=0.99)] = 0.0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/attn-map"),
    device: Device = "auto",
    data_root: DataRoot = None,
) -> None:
    """Show what a trained ViT attends to: per-head class-token maps and attention rollout.

    Example: [bold]vd attn-map mnist:test:42 --mode rollout --fusion max[/]
    """
    from vdcli import images
    from vdcli.checkpoint import load_checkpoint
    from vdcli.data import load_input
    from vdcli.device import pick_device
    from vdcli.runs import find_checkpoint
    from vdcli.tasks.vit import attention_maps, load_vit

    if mode not in ("cls", "rollout", "both"):
        raise VdError(f"--mode {mode}: expected cls, rollout or both")
    if fusion not in ("mean", "max", "min"):
        raise VdError(f"--fusion {fusion}: expected mean, max or min")
    path, found = find_checkpoint(checkpoint, "vit")
    ckpt = load_checkpoint(path, "vit")
    model = load_vit(ckpt, pick_device(device))
    spec = ckpt.meta["data"]
    pixels, what = load_input(image, spec["image_size"], spec["channels"], data_root)
    maps = attention_maps(model, pixels, layer, fusion, discard)
    if head is not None and not 0 <= head < len(maps.heads):
        raise VdError(f"--head {head}: this ViT has {len(maps.heads)} heads (0..{len(maps.heads) - 1})")
    out.mkdir(parents=True, exist_ok=True)
    top = int(maps.probs.argmax())
    written, panels = [], [images.enlarge(images.to_pil(pixels).convert("RGB"))]
    captions = [f"{spec['classes'][top]} ({maps.probs[top]:.0%})"]
    if mode in ("cls", "both"):
        for h in [head] if head is not None else range(len(maps.heads)):
            overlay = images.enlarge(images.heat_overlay(pixels, maps.heads[h]))
            written.append(images.save(overlay, out / f"layer{layer % len(model.blocks)}_head{h}.png"))
            panels.append(overlay)
            captions.append(f"layer {layer % len(model.blocks)} head {h}")
    if mode in ("rollout", "both"):
        overlay = images.enlarge(images.heat_overlay(pixels, maps.rollout))
        written.append(images.save(overlay, out / "rollout.png"))
        panels.append(overlay)
        captions.append(f"rollout ({fusion})")
    written.append(images.save(images.hstack(panels, captions), out / "attention.png"))
    _say(
        f"using {found}",
        f"{what}: predicted [bold]{spec['classes'][top]}[/] with probability {maps.probs[top]:.1%}",
        f"wrote {out}/: " + ", ".join(p.name for p in written),
    )


# --- the latent space -------------------------------------------------------------------------


@train_command("vae", "train-vae", """Train the KL-regularised autoencoder that maps images to a small latent grid.

    Example: [bold]vd train-vae recipes/mnist_vae.yaml[/]

    Writes runs/<recipe>/<time>/: checkpoint.safetensors (with the latent scale factor),
    reconstructions.png (originals above reconstructions), samples.png (decoded prior samples), loss.png.
    """)
def _report_vae(summary) -> None:
    _say(
        f"[bold]test reconstruction MSE {summary.mse:.5f}, PSNR {summary.psnr:.2f} dB[/]; latent scale factor {summary.scale_factor:.4f}",
        f"{summary.steps} steps in {_duration(summary.seconds)}; wrote {summary.run.dir}/: " + ", ".join(p.name for p in summary.files if p.exists()),
    )


@command("interpolate")
def interpolate_cmd(
    a: Annotated[str, typer.Argument(help="First image: a file or a dataset reference such as mnist:test:3.")],
    b: Annotated[str, typer.Argument(help="Second image.")],
    checkpoint: Annotated[Optional[str], typer.Option(help="A VAE, or an LDM to walk through its noise space via DDIM inversion (default: the newest VAE run).")] = None,
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
    interpolation.gif (both, animated side by side). With an LDM checkpoint the latent path runs
    through noise: DDIM inversion of both images, slerp, DDIM decoding.
    """
    from vdcli.checkpoint import KINDS, load_checkpoint
    from vdcli.data import load_input
    from vdcli.device import pick_device
    from vdcli.runs import find_checkpoint
    from vdcli.tasks import ldm, vae

    if mode not in ("slerp", "lerp"):
        raise VdError(f"--mode {mode}: expected slerp or lerp")
    path, found = find_checkpoint(checkpoint, "vae")
    ckpt = load_checkpoint(path)
    if ckpt.kind not in ("vae", "ldm"):
        raise VdError(f"{path} is {KINDS[ckpt.kind]}, but this command needs {KINDS['vae']} or {KINDS['ldm']}")
    spec = ckpt.meta["data"]
    (xa, what_a), (xb, what_b) = (load_input(x, spec["image_size"], spec["channels"], data_root) for x in (a, b))
    if ckpt.kind == "vae":
        model, _ = vae.load_vae(ckpt, pick_device(device))
        result, how = vae.interpolate(model, xa, xb, frames, mode), f"{mode} in the VAE's latent space"
    else:
        model = ldm.load_ldm(ckpt, pick_device(device))
        result, how = ldm.interpolate(model, xa, xb, frames, steps), f"slerp between DDIM-{steps} inversions"
    files = vae.write_interpolation(result, out, fps)
    _say(f"using {found}", f"{what_a} -> {what_b}: {frames} frames ({how})", f"wrote {', '.join(str(p) for p in files)}")


# --- latent diffusion -------------------------------------------------------------------------


@train_command("ldm", "train-ldm", """Train a class-conditional latent diffusion model (and its VAE first, if the recipe names none).

    Example: [bold]vd train-ldm recipes/mnist_latent.yaml[/]  then  [bold]vd sample --steps 50 --sampler ddim[/]

    Writes runs/<recipe>/<time>/: checkpoint.safetensors (denoiser, EMA, and its VAE: sample needs
    nothing else), latents.safetensors (the cached encodings), samples_<step>.png (one row per
    class, fixed seed), loss.png, and vae/ when the VAE was trained here.
    """)
def _report_ldm(summary) -> None:
    _say(
        f"[bold]denoiser trained: {summary.steps} steps in {_duration(summary.seconds)}, final loss {summary.loss:.4f}[/] ({summary.vae_note})",
        f"wrote {summary.run.dir}/: " + ", ".join(p.name for p in summary.files if p.exists()),
        f"next: vd sample --checkpoint {summary.run.dir} --class all",
    )


@command("sample")
def sample_cmd(
    checkpoint: Annotated[Optional[str], typer.Option(help="An LDM checkpoint or run folder (default: the newest LDM run).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="ddim or ddpm (default: the recipe's, ddim).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps (default: the recipe's for DDIM, all T for DDPM).", min=1)] = None,
    eta: Annotated[Optional[float], typer.Option(help="DDIM noise: 0 is deterministic, 1 is DDPM-like.", min=0.0)] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale w; 1 turns it off (default: the recipe's).", min=0.0)] = None,
    class_: Annotated[str, typer.Option("--class", help="Class index or name, several as 3,7, 'all', or 'none' (unconditional).")] = "all",
    n: Annotated[int, typer.Option("--n", help="Images per class.", min=1)] = 8,
    batch_size: Annotated[int, typer.Option(help="Images denoised at once.", min=1)] = 256,
    trajectory: Annotated[bool, typer.Option("--trajectory", help="Also write trajectory.gif: the predicted x0 at every step.")] = False,
    seed: Annotated[int, typer.Option(help="Same seed and options, same images.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/sample"),
    device: Device = "auto",
) -> None:
    """Generate images with the DDIM or DDPM sampler from a trained latent diffusion model.

    Example: [bold]vd sample --steps 50 --sampler ddim --class seven --n 16[/]

    Writes grid.png (one row per class), every image as images/<class>_<i>.png, and with
    --trajectory an animated GIF of the denoising.
    """
    import torch

    from vdcli.checkpoint import load_checkpoint
    from vdcli.device import pick_device
    from vdcli.runs import find_checkpoint
    from vdcli.tasks import ldm as tasks

    path, found = find_checkpoint(checkpoint, "ldm")
    model = tasks.load_ldm(load_checkpoint(path, "ldm"), pick_device(device))
    sampler = sampler or model.defaults.sampler
    if sampler not in ("ddim", "ddpm"):
        raise VdError(f"--sampler {sampler}: expected ddim or ddpm")
    steps = steps or (model.defaults.steps if sampler == "ddim" else model.schedule.T)
    if steps > model.schedule.T:
        raise VdError(f"--steps {steps}: this model was trained with T = {model.schedule.T} timesteps; use at most {model.schedule.T}")
    classes, names, w = tasks.condition(model, class_, guidance)
    eta = eta if eta is not None else (model.defaults.eta if sampler == "ddim" else 1.0)
    t0 = time.perf_counter()
    samples, frames = tasks.generate_batched(model, torch.tensor(classes).repeat_interleave(n), batch_size,
                                             generator=torch.Generator().manual_seed(seed), trajectory=trajectory,
                                             sampler=sampler, steps=steps, eta=eta, guidance=w)
    seconds = time.perf_counter() - t0

    from vdcli import images

    out.mkdir(parents=True, exist_ok=True)
    written = [tasks.save_class_grid(samples, names, n, out / "grid.png")]
    (out / "images").mkdir(exist_ok=True)
    for k, image in enumerate(samples):
        name = names[k // n].replace("/", "-").replace(" ", "_")
        images.save(images.to_pil(image), out / "images" / f"{name}_{k % n}.png")
    written.append(out / "images")
    if trajectory:
        shown = min(8, n)
        gif = [images.grid(f[:shown], nrow=shown) for f in frames]
        written.append(images.save_gif(gif, out / "trajectory.gif", fps=max(4.0, len(gif) / 5), hold_ends=1.0))
    _say(
        f"using {found}",
        f"[bold]{len(samples)} images[/] ({', '.join(names)}; {sampler.upper()} {steps} steps, eta {eta:g}, guidance {w:g}, seed {seed}) "
        f"in {_duration(seconds)}, {seconds / len(samples) * 1000:.0f} ms per image",
        "wrote " + ", ".join(str(p) for p in written),
    )


@command("inpaint")
def inpaint_cmd(
    image: Annotated[str, typer.Argument(help="The image: a file or a dataset reference such as mnist:test:0.")],
    mask: Annotated[str, typer.Option(help="What to fill: an image file (white = fill, black = keep) or box:X0,Y0,X1,Y1 in pixels.")],
    checkpoint: Annotated[Optional[str], typer.Option(help="An LDM checkpoint or run folder (default: the newest LDM run).")] = None,
    class_: Annotated[str, typer.Option("--class", help="The class the filled image should be (index or name), or 'none'.")] = "none",
    n: Annotated[int, typer.Option("--n", help="How many different fillings.", min=1)] = 4,
    steps: Annotated[int, typer.Option(help="DDIM steps.", min=1)] = 50,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance scale with --class (default: the recipe's).", min=0.0)] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same fillings.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/inpaint"),
    device: Device = "auto",
    data_root: DataRoot = None,
) -> None:
    """Fill a masked region of an image so that it fits the rest and the asked class.

    Example: [bold]vd inpaint mnist:test:0 --mask box:0,16,32,32 --class 7 --n 6[/]

    Writes inpaint.png (the image, the masked image, then each filling) and each filling as
    inpaint_<i>.png. Known pixels are kept exactly.
    """
    import torch

    from vdcli import images
    from vdcli.checkpoint import load_checkpoint
    from vdcli.data import load_input, read_mask
    from vdcli.device import pick_device
    from vdcli.runs import find_checkpoint
    from vdcli.tasks import ldm as tasks

    path, found = find_checkpoint(checkpoint, "ldm")
    ckpt = load_checkpoint(path, "ldm")
    model, spec = tasks.load_ldm(ckpt, pick_device(device)), ckpt.meta["data"]
    pixels, what = load_input(image, spec["image_size"], spec["channels"], data_root)
    size = spec["image_size"]
    region = read_mask(mask, size)
    if not region.any():
        raise VdError(f"--mask {mask} selects no pixel: white (or the box) marks what to fill")
    (label,), (name,), w = tasks.condition(model, class_, guidance, single=True)
    filled = tasks.inpaint(model, pixels, region, label, n=n, steps=steps, guidance=w, generator=torch.Generator().manual_seed(seed))
    out.mkdir(parents=True, exist_ok=True)
    masked = torch.where(region[None], torch.full_like(pixels, 128), pixels)
    written = [images.save(images.grid(torch.cat([pixels[None], masked[None], filled]), nrow=n + 2), out / "inpaint.png")]
    written += [images.save(images.to_pil(x), out / f"inpaint_{i}.png") for i, x in enumerate(filled)]
    _say(f"using {found}", f"{what}: filled {int(region.sum())} of {size * size} pixels {n} ways "
         f"({name}, DDIM {steps} steps, guidance {w:g})",
         f"wrote {out}/: inpaint.png, inpaint_0..{n - 1}.png")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
