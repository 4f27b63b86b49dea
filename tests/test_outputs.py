"""Where commands write (exptrack/outputs.py): a fresh folder per call, and --overwrite never
empties a folder exptrack did not write."""

from __future__ import annotations

import pytest

from exptrack.errors import OutputError
from exptrack.outputs import MARKER, check_save_dir, invocation_dir


def _users_folder(path):
    path.mkdir()
    (path / "mlflow.db").write_bytes(b"the user's store")
    (path / "notes.txt").write_text("mine")
    return path


def test_overwrite_refuses_the_working_folder_and_its_parents(tmp_path, monkeypatch):
    work = _users_folder(tmp_path / "work")
    (work / MARKER).write_text("")  # even with the marker: it is where the store lives
    monkeypatch.chdir(work)
    for folder in (".", str(work), str(tmp_path)):
        with pytest.raises(OutputError, match="that is the working folder"):
            check_save_dir(folder, overwrite=True)
    assert (work / "mlflow.db").read_bytes() == b"the user's store"


def test_overwrite_refuses_a_folder_exptrack_did_not_write(tmp_path):
    folder = _users_folder(tmp_path / "dataset")
    with pytest.raises(OutputError, match=r"holds files exptrack did not write \(mlflow.db, notes.txt\)"):
        invocation_dir(folder, tmp_path / "default", overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["mlflow.db", "notes.txt"]


def test_overwrite_empties_a_folder_an_earlier_command_wrote(tmp_path):
    first = invocation_dir(tmp_path / "report", tmp_path / "default", overwrite=False)
    (first / "old.csv").write_text("1")
    again = invocation_dir(tmp_path / "report", tmp_path / "default", overwrite=True)
    assert again == first and sorted(p.name for p in again.iterdir()) == [MARKER]


@pytest.mark.parametrize("under", ["", "sub/x"])
def test_a_save_dir_that_is_a_file_or_under_one_is_refused_before_any_work(tmp_path, under):
    """evaluate, compare and predict found it by a mkdir after all their work: a traceback, exit 1."""
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(OutputError, match=f"--save-dir .*: {afile} is a file, not a folder"):
        check_save_dir(afile / under if under else afile, overwrite=False)
