"""What users install and read: the environment files list pyproject's dependencies, the docs
match the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {d.replace(" ", "") for d in project["dependencies"]}


def test_conda_yaml_matches_pyproject():
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert {d for d in pip if d != "-e ."} == _pyproject_dependencies()


def test_python_env_matches_pyproject():
    env = yaml.safe_load((ROOT / "python_env.yaml").read_text())
    assert {d for d in env["dependencies"] if d != "-e ."} == _pyproject_dependencies()


def test_mlproject_entry_points_run_the_cli():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert {"train", "evaluate", "tune", "visualize"} <= set(project["entry_points"])
    for name, entry in project["entry_points"].items():
        assert entry["command"].startswith(f"python -m exptrack {name}")


def test_every_package_folder_is_a_regular_package():
    folders = {p.parent for p in (ROOT / "exptrack").rglob("*.py")}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()) == []


def test_the_config_reference_lists_every_key_once():
    """docs/config.md is the reference of every key (the schema is the truth; a key added or
    renamed there must be documented)."""
    from exptrack.config import Config, to_flat_dict

    documented = re.findall(r"^\| `([a-z_0-9]+\.[a-z_0-9]+)` \|", (ROOT / "docs" / "config.md").read_text(), re.M)
    assert sorted(documented) == sorted(to_flat_dict(Config()))


def test_the_readme_links_only_to_files_that_exist():
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)", (ROOT / "README.md").read_text()):
        assert (ROOT / link).is_file(), link


def test_a_process_left_running_by_a_test_fails_the_session(tmp_path):
    """tests/leftovers.py: run pytest on a test that starts `sleep` and never stops it."""
    import subprocess
    import sys

    test = tmp_path / "test_leaks.py"
    test.write_text("import subprocess\n\ndef test_leaks():\n    subprocess.Popen(['sleep', '120'])\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.leftovers", "-p", "no:cacheprovider",
                           str(test)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "1 passed" in proc.stdout and "outlived the session (now killed)" in proc.stdout and "sleep 120" in proc.stdout
