"""Run folders: where a training run keeps everything it writes.

    runs/<recipe>/<YYYYmmdd-HHMMSS>/
        recipe.yaml                  the resolved recipe (defaults and --set applied)
        metrics.jsonl                one JSON object per logged step and per evaluation
        checkpoint.safetensors       weights + metadata; rebuilds the model alone
        checkpoint.state.safetensors optimizer state, for --resume
        *.png                        what the run shows (samples, curves, confusion matrix ...)
        .lock                        while a process trains into it: its pid, host and start time
    runs/<recipe>/latest -> <YYYYmmdd-HHMMSS>

Commands that need a checkpoint take a file or a run folder, or else use the newest run of
the right kind under ``runs/``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from vdcli.checkpoint import KINDS, read_header
from vdcli.errors import VdError, write_failure

CHECKPOINT = "checkpoint.safetensors"
LOCK = ".lock"


def default_root() -> Path:
    return Path(os.environ.get("VD_RUNS", "runs"))


class Run:
    def __init__(self, folder: Path):
        self.dir = Path(folder)
        self.checkpoint = self.dir / CHECKPOINT
        self.metrics = self.dir / "metrics.jsonl"
        self.recipe = self.dir / "recipe.yaml"
        self._undo: tuple[list[Path], str | None] | None = None  # set by new_run: what discard() restores

    def discard(self) -> bool:
        """Remove a run that ended before it saved a checkpoint (bad data path, unusable VAE, a full
        disk, a crash ...): its folder, the folders ``new_run`` made for it, and the ``latest`` pointer
        put back (or removed when the run it pointed at is gone). A run with a checkpoint (a VAE
        stage's counts too; cached latents do not), or one not made by ``new_run``, is kept.
        True if removed."""
        if self._undo is None or any(self.dir.rglob(CHECKPOINT)):
            return False
        made, previous = self._undo
        shutil.rmtree(self.dir, ignore_errors=True)
        link = self.dir.parent / "latest"
        try:
            if link.is_symlink() and os.readlink(link) == self.dir.name:
                link.unlink()
            if previous is not None and (self.dir.parent / previous).is_dir() and not link.is_symlink():
                link.symlink_to(previous, target_is_directory=True)
        except OSError:
            pass
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: something else lives there
        self._undo = None
        return True

    def __repr__(self) -> str:
        return f"Run({self.dir})"


def new_run(root: Path, name: str) -> Run:
    """A fresh run folder for recipe ``name``, and the ``latest`` pointer moved to it."""
    base = Path(root) / name
    made, missing = [], base
    while not missing.exists() and missing != missing.parent:  # the folders mkdir makes, innermost first
        made.append(missing)
        missing = missing.parent
    link = base / "latest"
    previous = os.readlink(link) if link.is_symlink() else None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = base / stamp, 1
    try:
        base.mkdir(parents=True, exist_ok=True)
        while True:  # mkdir, not exists(): two runs started in the same second get two folders
            try:
                folder.mkdir()
                break
            except FileExistsError:
                n += 1
                folder = base / f"{stamp}-{n}"
    except OSError as e:  # a read-only or full disk, no permission, a path the system refuses (/proc/x)
        raise write_failure(e, folder) or VdError(f"cannot make the run folder {folder}: {e.strerror or e}; "
                                                  f"pass --out a folder you can write to") from None
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(folder.name, target_is_directory=True)
    except OSError:
        pass  # no symlinks here (some Windows set-ups): finding the newest run does not need them
    run = Run(folder)
    run._undo = (made, previous)
    return run


def last_run(root: Path, name: str) -> Run:
    """The newest run of recipe ``name``, for --resume."""
    base = Path(root) / name
    runs = sorted((p for p in base.glob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: p.name)
    if not runs:
        raise VdError(f"nothing to resume: no runs of recipe '{name}' under {base}; start one without --resume")
    return Run(runs[-1])


def find_checkpoint(arg: str | Path | None, kind: str, root: Path | None = None) -> tuple[Path, str]:
    """(checkpoint path, how it was found) from a --checkpoint argument or the newest run of ``kind``."""
    if arg:
        path = Path(arg)
        if path.is_dir():
            for candidate in (path / CHECKPOINT, path / "latest" / CHECKPOINT):
                if candidate.is_file():
                    return candidate, f"checkpoint {candidate}"
            raise VdError(f"{path} is a folder without {CHECKPOINT}; pass a run folder or a .safetensors file")
        if not path.exists():
            raise VdError(f"checkpoint {path} not found")
        return path, f"checkpoint {path}"
    root = Path(root or default_root())
    found = []
    for ckpt in root.glob(f"*/*/{CHECKPOINT}"):
        if ckpt.parent.is_symlink():
            continue
        try:
            if read_header(ckpt).get("kind") == kind:
                found.append(ckpt)
        except VdError:
            continue
    if not found:
        raise VdError(f"no run of {KINDS[kind]} found under {root}/; train one first or pass --checkpoint PATH")
    newest = max(found, key=lambda p: p.stat().st_mtime)
    return newest, f"latest {kind} run: {newest}"


# --- who trains into a run ------------------------------------------------------------------


def _started(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks since boot, /proc/<pid>/stat field 22), to tell
    a reused pid from the lock's owner; None where there is no /proc or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # the fields after the command name, which may hold spaces


def _alive(owner: dict) -> bool:
    """Whether the lock's owner may still run: always True for another host (we cannot look)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner.get("pid", 0))
    if pid <= 0:
        return False  # an empty or garbled lock: its writer died while writing it
    if os.name == "nt":
        return True  # os.kill(pid, 0) would end the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by another user
    started = _started(pid)
    return started is None or owner.get("started") is None or started == owner["started"]


class RunLock:
    """``<run>/.lock`` while a process trains into the run: made with O_EXCL (one process wins a race),
    holding the owner's pid, host and start time, removed by ``release`` on every exit path.

    A lock whose owner is alive refuses the second process. A lock left by a process that died on
    this host (SIGKILL, the OOM killer, a reboot) is taken over with a note: the pid is gone, so no
    one writes the run, and refusing would only make the user delete a file vd knows to be stale.
    A lock from another host is never taken over (its pid cannot be checked from here).
    """

    def __init__(self, run: Run):
        self.path = run.dir / LOCK
        self.held = False

    def acquire(self) -> str | None:
        """Take the lock or raise VdError naming its owner; returns a note if a stale lock was taken over."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _started(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        note = None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released between our open and our read: try again
                who = f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('since')}"
                if _alive(owner):
                    raise VdError(f"{self.path.parent} is being trained by another vd process ({who}); wait for it to end "
                                  f"or stop it; if no vd process runs there, remove {self.path}") from None
                try:  # a rename, not an unlink: of two processes taking over the same stale lock, one wins
                    os.replace(self.path, self.path.with_name(f"{LOCK}.stale"))
                    self.path.with_name(f"{LOCK}.stale").unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                note = f"note: took over the stale lock of {self.path.parent}: its owner ({who}) is no longer running"
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return note
        raise VdError(f"could not lock {self.path.parent}: {self.path} keeps changing; is another vd process starting there?")

    def _owner(self) -> dict | None:
        owner = {}
        for wait in (0.0, 0.2):  # an empty lock may be one another process is writing this instant
            time.sleep(wait)
            try:
                owner = json.loads(self.path.read_text() or "{}")
            except FileNotFoundError:
                return None
            except (OSError, ValueError):
                owner = {}
            if owner:
                break
        if not isinstance(owner, dict) or not owner:  # a process that died while writing it
            owner = {"pid": 0, "host": socket.gethostname(), "since": time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(self.path.stat().st_mtime))}
        return owner

    def release(self) -> None:
        """Remove the lock if this process holds it (a run folder already removed is fine)."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
