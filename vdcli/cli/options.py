"""Options every command spells the same way: one definition each, imported by the command modules."""

from pathlib import Path
from typing import Annotated, Optional

import typer

Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps; auto picks CUDA when present.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed (training: overrides train.seed). Same seed, same result on the CPU.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=3e-4 (repeatable).")]
DataRoot = Annotated[Optional[Path], typer.Option(help="Where datasets live (else $VD_DATA_ROOT, else ~/.cache/vd/data).")]
RunsDir = Annotated[Path, typer.Option("--out", help="Folder that holds the runs (runs/<recipe>/<time>/).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the newest run of this recipe from its last checkpoint.")]

