"""The ``vd`` application: the Typer app, how a command reports user errors, and what every
command shares (the training-command factory, printing). Command modules register on ``app``.
"""

import functools
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from vdcli import __version__
from vdcli.cli.options import DataRoot, Device, Quiet, Resume, RunsDir, Seed, Sets, check_data_root, check_device, check_out
from vdcli.errors import TrainingFailed, VdError, write_failure

app = typer.Typer(
    name="vd",
    help="Vision transformers and latent diffusion: patchify, train, look inside, sample.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
_debug = {"on": bool(os.environ.get("VD_DEBUG"))}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vd {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of user errors too.")] = False,
) -> None:
    _debug["on"] = debug or bool(os.environ.get("VD_DEBUG"))  # set on every call: one process may run several (tests)


def _unwrap(doc: str) -> str:
    """Join the lines of each docstring paragraph, so that --help wraps them to the terminal."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def command(name: str, on: typer.Typer | None = None):
    """Register a command (on ``app``, or on the sub-app ``on``: ``vd runs compare``) whose user errors
    print as one line and exit 2 (130 when interrupted, 1 when a training command failed unexpectedly)."""

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
                from rich.markup import escape

                from vdcli import distributed
                from vdcli.progress import console
                from vdcli.trainer import TrainingInterrupted

                err = console.__class__(stderr=True, highlight=False)
                if isinstance(e, TrainingInterrupted):
                    if distributed.is_main():  # under torchrun every rank stopped at this step: one line
                        err.print(f"[yellow]{escape(str(e))}[/]; continue with: {escape(_again())}", soft_wrap=True, markup=True)
                    raise typer.Exit(130)
                if not distributed.is_main() and not isinstance(e, TrainingFailed):
                    raise typer.Exit(e.exit_code)  # the same user error on every rank: rank 0 says it
                where = "" if distributed.is_main() else f"rank {distributed.rank()}: "
                err.print(f"[red]error:[/] {escape(where + str(e))}", soft_wrap=True, markup=True)  # a path may hold [...]
                raise typer.Exit(e.exit_code)  # 2: the input was wrong; 1: a training command failed (TrainingFailed)

        return (on or app).command(name)(run)

    return wrap


def _again() -> str:
    """The command line that resumes this one (under torchrun, through torchrun)."""
    from vdcli import distributed

    args = [a for a in sys.argv[1:] if a != "--resume"]
    launcher = f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', distributed.world_size())} -m vdcli" \
        if distributed.launched() else "vd"
    return " ".join([launcher, *args, "--resume"])


def say(*lines: str) -> None:
    from vdcli.progress import console

    for line in lines:
        console.print(line, soft_wrap=True)


def duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def _prepare(kind: str, recipe: Path, sets, seed, resume: bool, out: Path, notes: list[str] | None = None):
    """(the validated recipe, the run, its lock): a new run folder, or the last one with --resume, locked
    (by rank 0 under torchrun) before anything is written into it."""
    from vdcli import distributed
    from vdcli.checkpoint import atomic_write
    from vdcli.recipe import load_recipe, recipe_to_yaml
    from vdcli.runs import Run, RunLock, last_run, new_run

    overrides = list(sets or []) + ([f"train.seed={seed}"] if seed is not None else [])
    run = lock = refused = None
    if resume:
        run = last_run(out, recipe.stem)
        if not run.recipe.is_file():
            raise VdError(f"cannot resume {run.dir}: it has no recipe.yaml (that run ended before it started); "
                          f"remove it, or start a new run without --resume")
    else:
        validated = load_recipe(recipe, kind, overrides, notes)  # a refused recipe makes no folder
    if distributed.is_main():
        try:
            run = run or new_run(out, recipe.stem)
            lock = RunLock(run)
            note = lock.acquire()
            if note:  # on stderr even with --quiet: someone's run died there
                typer.echo(note, err=True)
        except VdError as e:
            refused = e
    if distributed.world_size() > 1:  # one run folder, made and locked by rank 0
        folder, refusal = distributed.broadcast((str(run.dir) if run is not None else None, refused is not None))
        if refusal and not distributed.is_main():
            raise typer.Exit(2)  # rank 0 says why
        run = run if distributed.is_main() else Run(Path(folder))
    if refused is not None:
        if run is not None:
            run.discard()
        raise refused
    try:
        if resume:
            validated = load_recipe(run.recipe, kind, overrides, notes)
        text = recipe_to_yaml(validated)
        atomic_write(run.recipe, lambda tmp: tmp.write_text(text), len(text))  # a resume reads it: never half-written
    except BaseException as e:
        if lock is not None:
            lock.release()
        _failed(e, run)
    return validated, run, lock


def _failed(error: BaseException, run) -> NoReturn:
    """End a training command that raised: remove its run folder if it saved no checkpoint, and make
    what is not a VdError one line (a full disk: what could not be written; anything else: where the
    traceback is). Called inside the ``except`` block that caught ``error``."""
    from vdcli import distributed

    if distributed.is_main() and run is not None:
        run.discard()  # refused or failed before it saved anything (data not found, unusable VAE, a crash ...)
    if isinstance(error, VdError) or not isinstance(error, Exception):  # and Ctrl-C, SystemExit: as they are
        raise error
    failure = write_failure(error, getattr(error, "filename", None) or (f"into {run.dir}" if run is not None else None))
    if failure is not None:
        raise failure from error
    if _debug["on"]:
        raise error
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(error))
    log = None
    places = [run.dir / "error.log"] if run is not None and run.dir.is_dir() and distributed.is_main() else []
    for place in places + [None]:
        try:
            if place is None:
                fd, place = tempfile.mkstemp(prefix="vd-error-", suffix=".log")
                os.close(fd)
            Path(place).write_text(text)
            log = place
            break
        except OSError:
            continue
    what = (str(error).strip().splitlines() or [""])[0][:200]
    saved = " ".join(n[4:] for n in getattr(error, "__notes__", []) if n.startswith("vd: "))
    where = f"the full traceback is in {log}" if log else "the traceback could not be written; run vd --debug ... to see it"
    raise TrainingFailed(f"training stopped by an unexpected {type(error).__name__}{': ' + what if what else ''}; "
                         f"{saved + '; ' if saved else ''}{where}") from error


# Which module's ``train(recipe, run, ...)`` each training command runs.
TRAINERS = {"vit": "vdcli.tasks.vit", "vae": "vdcli.tasks.vae", "clip": "vdcli.tasks.clip", "ldm": "vdcli.tasks.ldm_train",
            "controlnet": "vdcli.tasks.controlnet"}


def train_command(kind: str, name: str, doc: str):
    """Register ``vd <name> RECIPE``: the same options for every kind; ``report`` prints the summary."""
    label, example = {"vit": ("A ViT", "mnist_vit.yaml"), "vae": ("A VAE", "mnist_vae.yaml"), "ldm": ("An LDM", "mnist_latent.yaml"),
                      "clip": ("A CLIP", "mnist_clip.yaml"), "controlnet": ("A ControlNet", "mnist_controlnet.yaml")}[kind]

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

            from vdcli import distributed

            check_out(out)
            check_data_root(data_root)
            where = distributed.setup(check_device(device))  # under torchrun: join the group, one GPU per process
            quiet = quiet or not distributed.is_main()
            task = importlib.import_module(TRAINERS[kind])  # imported here, not above: vd --help stays fast
            notes: list[str] = []
            validated, run, lock = _prepare(kind, recipe, set_, seed, resume, out, notes)
            if not quiet:
                say(*notes)
            try:
                summary = task.train(validated, run, device=where, data_root=data_root, resume=resume, quiet=quiet)
            except BaseException as e:
                _failed(e, run)
            finally:
                if lock is not None:
                    lock.release()
            if distributed.is_main():
                report(summary)

        train.__doc__ = doc
        train.__name__ = f"{kind}_train"
        command(name)(train)
        return report

    return register


def main() -> None:
    app()
