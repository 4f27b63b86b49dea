"""bench/recipe.py runs end to end (tiny data, one epoch): the baseline and exptrack's recipe
are both trained and scored on the test subjects, and the summary names the difference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_recipe_bench_runs_both_recipes(tiny_demo, tmp_path):
    out = tmp_path / "runs.csv"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "recipe.py"), "--data", str(tiny_demo), "--classes", "3",
         "--frame-size", "16", "--width", "0.125", "--epochs", "1", "--seeds", "0", "--masks", "on",
         "--set", "train.num_workers=0", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(out)
    assert sorted(rows.recipe) == ["exptrack", "plain"]
    assert rows.test_mca.between(0, 1).all()
    assert "masks on: exptrack - plain = " in proc.stdout


def test_shake_bench_reports_the_person_share(tiny_demo, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "shake.py"), "--data", str(tiny_demo), "--frame-size", "32",
                           "--subjects", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shares = [float(line.split("residual ")[1].split(";")[0]) for line in proc.stdout.splitlines() if "share" in line]
    assert len(shares) == 2 and all(0 < s < 1 for s in shares)  # raw, stabilized
