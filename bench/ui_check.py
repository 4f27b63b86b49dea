"""What a new user sees in `mlflow ui` after the README's commands, in a real browser (issue 18).

Starts `mlflow ui` on this folder's store (a free local port, its own process group, stopped at
the end), then opens it in headless Chromium (Debian's `chromium`) with a fresh profile, as a
first visit does (nothing remembered in the browser's localStorage):

1. the run URL that `exptrack train` prints at its end: the run's page in the model-training
   view, its metrics on it;
2. its experiment's runs table (the run page's "Runs" breadcrumb, the same view): the train run
   listed, one click from its page;
3. the registered model's newest version: its model card (the description) rendered;
4. for the record, the experiment's plain URL (what the experiment list links to): MLflow 3.17
   opens it in the view the browser last used, GenAI on a first visit, whatever the experiment's
   `mlflow.experimentKind` tag says (it only redirects experiments already shown once);
5. the newest visualize run's `visualizations/index.html` in MLflow's artifact viewer, in a
   1280 px wide window (issue 32: it must fit), and its first sample's overlay_with_probs.mp4 in
   the viewer's player (the chart's bars and names clear of the controls: look at the screenshot).

Each page is saved as a screenshot in --out (look at them) and checked in its DOM; the script
exits 1 when one of checks 1-3 fails.

Usage (in the folder of the README's main command, after `exptrack promote`):
  python bench/ui_check.py [--experiment exptrack-demo] [--out outputs/ui_check]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow

from exptrack.tracking import run_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow ui exited with {proc.returncode}: see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    stop(proc)
    raise SystemExit(f"mlflow ui did not answer on port {port} within 120 s: see {log}")


def stop(proc: subprocess.Popen) -> None:
    """The server and every process it started (uvicorn workers, job runners)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def browse(url: str, screenshot: Path, width: int = 1500) -> str:
    """The page's DOM after it has rendered, in a fresh profile; a screenshot beside it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium here: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="ui-check-profile-") as profile:
        common = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                  f"--window-size={width},1000", "--virtual-time-budget=20000", "--hide-scrollbars"]
        subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=False)
    with tempfile.TemporaryDirectory(prefix="ui-check-profile-") as profile:
        common[4] = f"--user-data-dir={profile}"
        out = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=False)
    return out.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="exptrack-demo")
    parser.add_argument("--model", default="c3d-exercise")
    parser.add_argument("--out", default="outputs/ui_check")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    experiment = mlflow.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {mlflow.get_tracking_uri()}: run the main command first")
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="tags.`exptrack.command` = 'train'",
                              output_format="list", max_results=1)
    if not runs:
        raise SystemExit(f"experiment {args.experiment!r} has no train run")
    run = runs[0]
    versions = mlflow.MlflowClient().search_model_versions(f"name='{args.model}'")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_ui(port, out / "mlflow_ui.log")
    failures, notes = [], []
    try:
        # 1. the run URL the train command prints
        printed = run_url(run.info.run_id).replace("http://127.0.0.1:5000", base)
        dom = browse(printed, out / "1_run.png")
        if "val_mean_class_acc" not in dom:
            failures.append("run page: val_mean_class_acc not shown")
        # 2. the experiment's runs table in the same view: the train run one click away
        dom = browse(f"{base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
                     out / "2_runs.png")
        if f"runs/{run.info.run_id}" not in dom:
            failures.append("experiment page: no link to the train run (not the runs table?)")
        # 3. the newest version's page: the model card rendered
        if versions:
            newest = max(versions, key=lambda v: int(v.version))
            dom = browse(f"{base}/#/models/{args.model}/versions/{newest.version}", out / "3_version.png")
            if "Training config" not in dom:
                failures.append(f"version {newest.version} page: no model card")
        # 4. the plain experiment URL, first visit: recorded, not checked (MLflow's choice)
        dom = browse(f"{base}/#/experiments/{experiment.experiment_id}", out / "4_experiment_first_visit.png")
        view = "the runs table" if f"runs/{run.info.run_id}" in dom else "the GenAI overview"
        notes.append(f"the plain experiment URL opened {view} in a fresh browser")
        # 5. explanations in the artifact viewer, 1280 px wide
        shown = mlflow.search_runs([experiment.experiment_id], filter_string="tags.`exptrack.command` = 'visualize'",
                                   output_format="list", max_results=1)
        if shown:
            page = f"{base}/#/experiments/{experiment.experiment_id}/runs/{shown[0].info.run_id}/artifacts"
            dom = browse(f"{page}/visualizations/index.html", out / "5_visualize_index_1280.png", width=1280)
            if "index.html" not in dom:
                failures.append("visualize run: index.html not shown in the artifact viewer")
            browse(f"{page}/visualizations/sample_000/overlay_with_probs.mp4", out / "6_overlay_player.png",
                   width=1280)
        else:
            notes.append("no visualize run: explanations not looked at (run `exptrack visualize` first)")
    finally:
        stop(proc)
    print(f"screenshots in {out}: " + ", ".join(sorted(p.name for p in out.glob("*.png"))))
    for note in notes:
        print(f"note: {note}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
