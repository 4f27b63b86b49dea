"""Where a command writes: a fresh folder per invocation, so that what a run logs as artifacts is
only its own work (evaluate, visualize and promote once logged whatever an earlier call had left in
a shared folder)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import OutputError

DEFAULT_OUTPUTS = Path("outputs")  # relative to the working folder, never to a model's saved config


def check_save_dir(save_dir: str | Path | None, overwrite: bool) -> None:
    """Refuse, before any work, an explicit folder that already holds files (unless `overwrite`)."""
    if save_dir is None or overwrite:
        return
    folder = Path(save_dir)
    if folder.is_dir() and any(folder.iterdir()):
        raise OutputError(f"--save-dir {folder}: the folder is not empty; choose a new one, or pass --overwrite to "
                          "replace its contents (by default each call writes to a fresh folder)")


def invocation_dir(save_dir: str | Path | None, default: Path, overwrite: bool) -> Path:
    """The folder this call writes to: `default` (made fresh: a suffix when it exists), or the
    explicit `save_dir`, emptied first when `overwrite`."""
    if save_dir is None:
        return fresh_dir(default)
    folder = Path(save_dir)
    check_save_dir(folder, overwrite)
    if folder.is_dir():
        for entry in folder.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    folder.mkdir(parents=True, exist_ok=True)
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
