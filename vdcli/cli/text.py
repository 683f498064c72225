"""The text commands: ``vd train-clip`` (the text encoder that text-conditioned diffusion reads)."""

from vdcli.cli.app import duration, say, train_command


@train_command("clip", "train-clip", """Train a small CLIP (a ViT image tower and a causal text transformer) on captioned images.

    Example: [bold]vd train-clip recipes/mnist_clip.yaml[/]

    MNIST and Fashion-MNIST are captioned from their labels and from attributes measured on the
    pixels ('a bold seven leaning right'); an image folder from its metadata.jsonl (file_name,
    text), else its class names. Prints the zero-shot test accuracy and text-to-image recall@1/5.
    Writes runs/<recipe>/<time>/: checkpoint.safetensors (with its tokenizer), retrieval.png (a few
    prompts and their nearest test images), clip_map.png (image and text embeddings in 2-D), loss.png.
    """)
def _report_clip(summary) -> None:
    m = summary.metrics
    recall = f"; text->image recall@1 {m['recall@1']:.1%}, recall@5 {m['recall@5']:.1%}" if "recall@1" in m else ""
    say(
        f"[bold]zero-shot test accuracy {m['zero_shot_acc']:.2%}[/]{recall}",
        f"{summary.steps} steps in {duration(summary.seconds)}; wrote {summary.run.dir}/: " + ", ".join(p.name for p in summary.files if p.exists()),
    )
