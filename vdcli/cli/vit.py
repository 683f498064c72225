"""The ViT commands: ``vd patchify``, ``vd train-vit``, ``vd attn-map``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from vdcli.cli.app import command, duration, say, train_command
from vdcli.cli.options import DataRoot, Device, check_choice, check_data_root, check_device, check_input, check_out
from vdcli.errors import VdError


@command("patchify")
def patchify_cmd(
    image: Annotated[str, typer.Argument(help="An image file, or a dataset reference such as mnist:test:0.")],
    patch: Annotated[int, typer.Option(help="Patch side in pixels.", min=1)] = 16,
    size: Annotated[Optional[int], typer.Option(help="Resize (short side) and centre-crop to SIZE x SIZE first.", min=1)] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/patchify"),
    data_root: DataRoot = None,
) -> None:
    """Cut an image into ViT patches, row-major from the top left, and export the patch tensor.

    Example: [bold]vd patchify photo.jpg --size 224 --patch 16[/]  or  [bold]vd patchify mnist:test:0 --patch 7[/]

    Writes grid.png (patch grid, each patch numbered), sequence.png (the patches in the order the
    encoder reads them) and patches.safetensors ([N, C*P*P], values in [-1, 1]).
    """
    check_input(image, "IMAGE")
    check_out(out)
    check_data_root(data_root)
    from vdcli.data import load_input
    from vdcli.tasks.vit import export_patches

    pixels, _ = load_input(image, size, None, data_root)
    result = export_patches(pixels, patch, out)
    c, h, w = pixels.shape
    say(
        f"{image}: {w}x{h}, {c} channel(s) -> {result.rows}x{result.cols} = {result.shape[0]} patches of {patch}x{patch}",
        f"sequence: [{result.shape[0]}, {result.shape[1]}] = [N, C*P*P]; patch k is row k // {result.cols}, column k % {result.cols}",
        f"wrote {result.grid_png}, {result.sequence_png}, {result.tensor_path}",
    )


@train_command("vit", "train-vit", """Train a Vision Transformer classifier from a recipe (or, with model.arch: cnn, its CNN baseline).

    Example: [bold]vd train-vit recipes/mnist_vit.yaml --set train.steps=500[/]

    Writes runs/<recipe>/<time>/: checkpoint.safetensors, metrics.jsonl, loss.png,
    confusion.png, misclassified.png and, for a ViT, position_similarity.png. Ctrl-C saves a
    checkpoint; --resume continues.
    """)
def _report_vit(summary) -> None:
    say(
        f"[bold]test accuracy {summary.accuracy:.2%}[/] after {summary.steps} steps in {duration(summary.seconds)}",
        f"wrote {summary.run.dir}/: " + ", ".join(p.name for p in summary.files if p.exists()),
    )


@command("attn-map")
def attn_map_cmd(
    image: Annotated[Optional[str], typer.Argument(help="An image file, or a dataset reference such as mnist:test:42 (not with --prompt).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="A ViT checkpoint or run folder (default: the newest ViT run); with --prompt, a text LDM's.")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Generate an image for this prompt with a text LDM (--checkpoint) and show each word's cross-attention over it.")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="Show how the words of this prompt attend to each other in the CLIP text tower of --checkpoint (a CLIP or a text LDM), per layer.")] = None,
    positions: Annotated[bool, typer.Option("--positions", help="Draw how similar the learned position embeddings of every two patches are (a ViT, or a CLIP's image tower); no IMAGE.")] = False,
    steps: Annotated[int, typer.Option(help="With --prompt: DDIM steps (the maps are averaged over them).", min=1)] = 50,
    seed: Annotated[int, typer.Option(help="With --prompt: same seed, same image.", min=0, max=2**32 - 1)] = 0,
    layer: Annotated[int, typer.Option(help="Layer whose heads to show; -1 is the last.")] = -1,
    head: Annotated[Optional[int], typer.Option(help="Only this head (default: all; with --text, their mean).")] = None,
    mode: Annotated[str, typer.Option(help="cls: per-head class-token attention; rollout: attention rollout; both.")] = "both",
    fusion: Annotated[str, typer.Option(help="Rollout head fusion: mean, max or min.")] = "mean",
    discard: Annotated[float, typer.Option(help="Rollout: drop this fraction of the weakest attention weights.", min=0.0, max=0.99)] = 0.0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/attn-map"),
    device: Device = "auto",
    data_root: DataRoot = None,
) -> None:
    """Show what a trained ViT attends to (per-head class-token maps and attention rollout); with
    --prompt what each word of a prompt attends to in the image a text LDM generates for it; with
    --text how the words of a prompt attend to each other in a CLIP text tower; with --positions
    how alike the learned position embeddings of the patches are.

    Example: [bold]vd attn-map mnist:test:42 --mode rollout --fusion max[/]

    A text LDM: [bold]vd attn-map --prompt "a bold seven" --checkpoint runs/mnist_text/<time>[/]

    Words attending to words (a CLIP or a text LDM): [bold]vd attn-map --text "a bold seven leaning right" --checkpoint runs/mnist_clip/latest[/]

    Position embeddings (the newest ViT run, or --checkpoint a ViT or CLIP): [bold]vd attn-map --positions[/]
    """
    if text is not None:
        if image is not None or prompt is not None or positions:
            raise VdError("--text shows the text tower's attention between the words of a prompt; leave IMAGE, --prompt and --positions out")
        return _text_attn_map(text, checkpoint, head, out, device)
    if positions:
        if image is not None or prompt is not None:
            raise VdError("--positions draws the checkpoint's position embeddings, not an image's attention; leave IMAGE and --prompt out")
        return _positions_map(checkpoint, out, device)
    if prompt is not None:
        if image is not None:
            raise VdError(f"IMAGE {image} and --prompt: with --prompt the image is generated; leave IMAGE out")
        return _prompt_attn_map(prompt, checkpoint, steps, seed, out, device)
    if image is None:
        raise VdError("attn-map needs an IMAGE (a file or e.g. mnist:test:42), or --prompt with a text LDM --checkpoint")
    from vdcli import images
    from vdcli.checkpoint import load_checkpoint
    from vdcli.data import load_input
    from vdcli.runs import find_checkpoint
    from vdcli.tasks.vit import attention_maps, load_vit

    check_input(image, "IMAGE")
    check_input(checkpoint, "--checkpoint")
    check_choice(mode, "--mode", ("cls", "rollout", "both"))
    check_choice(fusion, "--fusion", ("mean", "max", "min"))
    check_out(out)
    check_data_root(data_root)
    where = check_device(device)
    path, found = find_checkpoint(checkpoint, "vit")
    ckpt = load_checkpoint(path, "vit")
    model = load_vit(ckpt, where)
    spec = ckpt.meta["data"]
    pixels, what = load_input(image, spec["image_size"], spec["channels"], data_root, spec.get("background", "white"))
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
    say(
        f"using {found}",
        f"{what}: predicted [bold]{spec['classes'][top]}[/] with probability {maps.probs[top]:.1%}",
        f"wrote {out}/: " + ", ".join(p.name for p in written),
    )


def _text_attn_map(text: str, checkpoint: str | None, head: int | None, out: Path, device: str) -> None:
    from vdcli import images
    from vdcli.checkpoint import load_checkpoint
    from vdcli.runs import find_checkpoint
    from vdcli.tasks.text_attention import load_text_tower, text_attention

    check_input(checkpoint, "--checkpoint")
    check_out(out)
    where = check_device(device)
    path, found = find_checkpoint(checkpoint, "clip")
    result = text_attention(load_text_tower(load_checkpoint(path), where), text)
    matrices = result.per_layer(head)
    which = "heads averaged" if head is None else f"head {head}"
    out.mkdir(parents=True, exist_ok=True)
    written = images.token_attention_image(matrices, result.tokens, [f"layer {i} ({which})" for i in range(len(matrices))],
                                           out / "text_attention.png", result.hidden)
    lines = [f"using {found}", f"'{text}': {len(result.tokens)} tokens ({' '.join(result.tokens)}), causal "
             f"self-attention of {len(matrices)} layer(s), {which}; hatched: the causal mask (a token never reads a later one)"]
    if result.unknown:
        lines.append(f"not in the tokenizer's vocabulary (read as [UNK]): {', '.join(result.unknown)}")
    say(*lines, f"wrote {written}")


def _positions_map(checkpoint: str | None, out: Path, device: str) -> None:
    from vdcli.checkpoint import KINDS, load_checkpoint
    from vdcli.runs import find_checkpoint
    from vdcli.tasks.vit import draw_position_similarity, load_vit

    check_input(checkpoint, "--checkpoint")
    check_out(out)
    where = check_device(device)
    path, found = find_checkpoint(checkpoint, "vit")
    ckpt = load_checkpoint(path)
    if ckpt.kind == "clip":
        from vdcli.tasks.clip import load_clip

        model, what = load_clip(ckpt, where)[0].image, "the CLIP's image tower"
    elif ckpt.kind == "vit":
        model, what = load_vit(ckpt, where), "the ViT"
    else:
        raise VdError(f"{path} is {KINDS[ckpt.kind]}; --positions needs a ViT (vd train-vit) or a CLIP (vd train-clip) checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    n = model.grid_size
    written = draw_position_similarity(model, out / "position_similarity.png", f"position embeddings of {what}: {n}x{n} patches")
    say(f"using {found}",
        f"cosine similarity of the learned position embedding of each of {n * n} patches with every other's ({what}, "
        "the class token left out)",
        f"wrote {written}")


def _prompt_attn_map(prompt: str, checkpoint: str | None, steps: int, seed: int, out: Path, device: str) -> None:
    from vdcli import images
    from vdcli.checkpoint import load_checkpoint
    from vdcli.runs import find_checkpoint
    from vdcli.tasks import ldm as tasks

    check_input(checkpoint, "--checkpoint")
    check_out(out)
    where = check_device(device)
    path, found = find_checkpoint(checkpoint, "ldm")
    ldm = tasks.load_ldm(load_checkpoint(path, "ldm"), where)
    result = tasks.prompt_attention(ldm, prompt, steps=steps, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    panels = [images.enlarge(images.to_pil(result.image).convert("RGB"))]
    panels += [images.enlarge(images.heat_overlay(result.image, heat)) for heat in result.maps]
    picture = images.hstack(panels, [prompt or "(empty prompt)", *result.words])
    written = images.save(picture, out / "prompt_attention.png")
    say(f"using {found}",
        f"'{prompt}': cross-attention of {len(result.words)} token(s) ({' '.join(result.words)}), averaged over "
        f"{steps} DDIM steps, every cross-attention layer and head (seed {seed})",
        f"wrote {written}")
