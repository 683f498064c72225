"""``vd runs compare``: several runs' curves in one PNG, for people without TensorBoard."""

from pathlib import Path
from typing import Annotated

import typer

from vdcli.cli.app import app, command, say
from vdcli.cli.options import check_out
from vdcli.errors import VdError

runs_app = typer.Typer(help="Look at finished or running training runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


def _metrics(path: Path) -> Path:
    """A run folder's (or its checkpoint's) metrics.jsonl; a path without one is a one-line error."""
    folder = path.parent if path.is_file() else path
    if not path.exists():
        raise VdError(f"{path}: no such run folder; give run folders such as runs/mnist_vit/latest")
    if not (folder / "metrics.jsonl").is_file():
        raise VdError(f"{path}: not a run folder (it has no metrics.jsonl); give run folders such as runs/mnist_vit/latest")
    return folder / "metrics.jsonl"


def _labels(paths: list[Path]) -> list[str]:
    """Short names that tell the runs apart: the recipe folder and the run's time (latest resolved)."""
    resolved = [p.resolve() if p.is_dir() else p.resolve().parent for p in paths]
    labels = [f"{p.parent.name}/{p.name}" for p in resolved]
    return [f"{label} ({i + 1})" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


@command("compare", on=runs_app)
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders (or their checkpoints).", metavar="RUN RUN ...")],
    out: Annotated[Path, typer.Option("--out", help="The PNG to write.")] = Path("compare.png"),
) -> None:
    """Draw the training loss and the evaluation metrics of several runs in one PNG."""
    from vdcli.images import compare_curves  # imported here, not above: matplotlib, and vd --help stays fast

    check_out(out.parent if str(out.parent) else Path("."), "--out")
    files = {label: _metrics(p) for label, p in zip(_labels(runs), runs)}
    if any(not f.read_text().strip() for f in files.values()):
        empty = next(p for p, f in zip(runs, files.values()) if not f.read_text().strip())
        raise VdError(f"{empty}: its metrics.jsonl is empty (the run has not logged a step yet)")
    say(f"wrote {compare_curves(files, out)} ({len(files)} runs)")

