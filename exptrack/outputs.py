"""Where a command writes: a fresh folder per invocation, so that what a run logs as artifacts is
only its own work (evaluate, visualize and promote once logged whatever an earlier call had left in
a shared folder)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .config import PathsConfig
from .errors import OutputError

# paths.outputs' default, for commands without a config of their own (predict, compare): relative
# to the working folder, never to a model's saved config
DEFAULT_OUTPUTS = Path(PathsConfig().outputs)
# In every folder a command writes its files to: what --overwrite may empty is only a folder
# that exptrack wrote, never a folder of the user's (the working folder, a dataset, a store).
MARKER = ".exptrack-output"


def check_save_dir(save_dir: str | Path | None, overwrite: bool, flag: str = "--save-dir") -> None:
    """Refuse, before any work, an explicit folder that is a file (or under one) or already holds
    files (unless `overwrite`, and then only one exptrack wrote)."""
    if save_dir is None:
        return
    folder = Path(save_dir)
    check_folder_path(folder, flag)
    if folder.is_dir() and any(folder.iterdir()):
        if overwrite:
            check_overwritable(folder)
            return
        raise OutputError(f"{flag} {folder}: the folder is not empty; choose a new one, or pass --overwrite to "
                          "replace its contents (by default each call writes to a fresh folder)")


def check_folder_path(folder: Path, flag: str) -> None:
    """Refuse a folder path that is a file, or lies under one: found before any work, not by a
    mkdir after it."""
    blocked = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise OutputError(f"{flag} {folder}: {blocked} is a file, not a folder; choose a folder")


def check_overwritable(folder: Path) -> None:
    """Refuse to empty a folder exptrack did not write: the working folder or one above it, or a
    folder without the marker every command's output folder has (a dataset, an MLflow store,
    the user's own files)."""
    resolved, here = folder.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise OutputError(f"--save-dir {folder} --overwrite: that is the working folder (or holds it), with its MLflow "
                          "store and outputs; exptrack empties only a folder it wrote: choose a new one")
    if not (folder / MARKER).exists():
        shown = ", ".join(sorted(p.name for p in folder.iterdir())[:5])
        raise OutputError(f"--save-dir {folder} --overwrite: the folder holds files exptrack did not write ({shown}); "
                          "it empties only a folder an earlier command wrote: choose a new or empty one")


@contextmanager
def invocation_folder(save_dir: str | Path | None, default: Path, overwrite: bool) -> Iterator[Path]:
    """The folder this call writes to (invocation_dir), kept only when the body completes: a
    command stopped part way (a signal, an error) leaves no half-written folder behind. A fresh
    folder is removed; an explicit `--save-dir` that existed is left empty."""
    existed = save_dir is not None and Path(save_dir).is_dir()
    folder = invocation_dir(save_dir, default, overwrite)
    try:
        yield folder
    except BaseException:
        try:
            _empty(folder) if existed else shutil.rmtree(folder)
        except OSError:  # the cause being raised matters more than a file that would not go
            pass
        raise


def _empty(folder: Path) -> None:
    for entry in folder.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def invocation_dir(save_dir: str | Path | None, default: Path, overwrite: bool) -> Path:
    """The folder this call writes to: `default` (made fresh: a suffix when it exists), or the
    explicit `save_dir`, emptied first when `overwrite` (only a folder exptrack wrote). Either
    gets the marker that makes it exptrack's."""
    if save_dir is None:
        folder = fresh_dir(default)
    else:
        folder = Path(save_dir)
        check_save_dir(folder, overwrite)
        if folder.is_dir() and any(folder.iterdir()):
            check_overwritable(folder)
            _empty(folder)
        folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by exptrack; `--save-dir <this folder> --overwrite` may empty it\n")
    return folder


def fresh_dir(path: Path) -> Path:
    """Make `path`, or `path-2`, `path-3`... when it exists (another call of the same second)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise OutputError(f"{path}: no free folder name")
