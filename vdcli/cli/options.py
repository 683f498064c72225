"""Options every command spells the same way, one definition each, and the checks that refuse a bad
value before a command loads anything: both imported by the command modules."""

import difflib
from pathlib import Path
from typing import Annotated, Optional

import typer

from vdcli.errors import VdError

Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps; auto picks CUDA when present.")]
Seed = Annotated[Optional[int], typer.Option(min=0, max=2**32 - 1, help="Random seed (training: overrides train.seed). Same seed, same result on the CPU.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=3e-4 (repeatable).")]
DataRoot = Annotated[Optional[Path], typer.Option(help="Where datasets live (else $VD_DATA_ROOT, else ~/.cache/vd/data).")]
RunsDir = Annotated[Path, typer.Option("--out", help="Folder that holds the runs (runs/<recipe>/<time>/).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the newest run of this recipe from its last checkpoint.")]


# ControlNet's options, shared by sample and inpaint
ControlNetRun = Annotated[Optional[str], typer.Option("--controlnet", help="A ControlNet run or checkpoint (vd train-controlnet); it carries its base LDM, so leave --checkpoint out.")]
ControlMap = Annotated[Optional[list[str]], typer.Option("--control", help="With --controlnet: a control map PNG (used as drawn), or an image to compute it from (a dataset reference such as mnist:test:7, or any file with --control-type); repeat for one row each.")]
ControlType = Annotated[Optional[str], typer.Option("--control-type", help="Compute the map from --control with edges, scribble or depth (default for dataset references: the ControlNet's own type).")]
ControlScale = Annotated[float, typer.Option("--control-scale", help="How strongly the map steers: 0 is the base model, 1 the trained control.", min=0.0)]


# --- checks every command runs on its options before it loads anything heavy -----------------
# Each raises VdError, one line that names the option and the value, which the CLI prints
# without a traceback (exit 2). Command modules call them first thing, e.g.
#     check_out(out); check_text(class_, "--class"); check_choice(mode, "--mode", MODES)


def _shown(value: str) -> str:
    return value if value.strip() else repr(value)


def check_text(value: str | None, option: str) -> str | None:
    """A string option that, when given, must not be empty or blank (None: not given)."""
    if value is not None and not value.strip():
        raise VdError(f"{option} {value!r}: empty; give a value or leave {option} out")
    return value


def check_items(value: str | None, option: str, example: str) -> list[str] | None:
    """A comma-separated list option ('3,7'): no empty list and no empty item."""
    if value is None:
        return None
    check_text(value, option)
    parts = [p.strip() for p in value.split(",")]
    if not all(parts):
        raise VdError(f"{option} {_shown(value)}: an empty item in the list; separate items with single commas, e.g. {option} {example}")
    return parts


def check_choice(value: str | None, option: str, choices) -> str | None:
    """One of ``choices``; a miss names the nearest."""
    if value is None or value in choices:
        return value
    starts = [c for c in choices if c.startswith(value.strip().lower())] if value.strip() else []
    close = starts[:1] or difflib.get_close_matches(value, list(choices), n=1)  # 'dpm' is dpmpp-2m, not ddpm
    hint = f"; did you mean {close[0]}?" if close else ""
    raise VdError(f"{option} {_shown(value)}: expected {', '.join(choices[:-1])} or {choices[-1]}{hint}")


def check_out(path: Path, option: str = "--out") -> Path:
    """A folder the command writes into: it may not exist yet, but it may not be (or be under) a file."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == path else f"is under {folder}, which is a file"
                raise VdError(f"{option} {path}: {what}; {option} names a folder to write into, pick another")
            break
    return path


def check_input(value: str | None, option: str) -> str | None:
    """A path or reference the command reads (an image, a checkpoint, a mask): not empty when given."""
    return check_text(value, option)


def check_device(name: str):
    """--device, resolved now (a typo or a missing GPU is refused before anything is loaded)."""
    from vdcli.device import pick_device

    check_text(name, "--device")
    return pick_device(name)


def check_data_root(path: Path | None) -> Path | None:
    """--data-root: a folder (it may be created by a download), never a file."""
    if path is not None:
        if not str(path).strip():
            raise VdError("--data-root '': empty; give a folder or leave --data-root out")
        check_out(path, "--data-root")
    return path


def check_steps(steps: int, T: int, option: str = "--steps") -> int:
    """Sampling steps: at most the T timesteps the model was trained with."""
    if steps > T:
        raise VdError(f"{option} {steps}: this model was trained with T = {T} timesteps; use at most {T}")
    return steps


def check_fractions(value: str | None, option: str, example: str) -> list[float] | None:
    """A comma-separated list of numbers in [0, 1] ('0.3,0.5'), in the order given."""
    parts = check_items(value, option, example)
    if parts is None:
        return None
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise VdError(f"{option} {value}: expected numbers between 0 and 1, e.g. {option} {example}") from None
    for x in numbers:
        if not 0.0 <= x <= 1.0:
            raise VdError(f"{option} {value}: {x:g} is outside 0..1 (0 keeps the input, 1 is pure noise)")
    return numbers


def check_control(controlnet: str | None, control: list[str] | None, control_type: str | None, checkpoint: str | None) -> None:
    """The control options, before anything is loaded."""
    from vdcli.controls import CONTROLS

    check_input(controlnet, "--controlnet")
    for c in control or []:
        check_input(c, "--control")
    check_choice(control_type, "--control-type", CONTROLS)
    if controlnet is None and (control or control_type):
        raise VdError(f"{'--control' if control else '--control-type'}: a control map needs a ControlNet; give --controlnet RUN")
    if controlnet is not None and not control:
        raise VdError("--controlnet: give the control map with --control MAP.png (or an image, e.g. --control mnist:test:7)")
    if controlnet is not None and checkpoint is not None:
        raise VdError(f"--checkpoint {checkpoint} and --controlnet: the ControlNet carries its base LDM; leave --checkpoint out")
