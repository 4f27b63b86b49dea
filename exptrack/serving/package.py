"""What a logged exptrack model holds on disk: the pyfunc package that MLflow saves.

One weights file (models/weights.py) as the model's artifact, this package's own code (so the
model runs without exptrack installed, as `mlflow models serve` does), `serving/entry.py` as the
models-from-code entry, a signature (uint8 clips in, a probability per class and the predicted
name out; the `video` parameter takes a video path instead) and pinned requirements.
tracking.Run.log_clip_model logs the folder made here as a LoggedModel of a run.
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

VIDEO_PARAM = "video"  # the inference parameter that carries a video path (serving/pyfunc.py)
PACKAGE_DIR = Path(__file__).resolve().parents[1]
MODEL_CODE = Path(__file__).resolve().parent / "entry.py"  # what mlflow.pyfunc.load_model runs (models from code)


def package_copy(folder: Path) -> Path:
    """The exptrack package without bytecode caches, for a model's code/ folder, copied into
    `folder` (the caller's temporary folder: nothing is left in the temp directory, also when
    the process is stopped)."""
    return Path(shutil.copytree(PACKAGE_DIR, folder / PACKAGE_DIR.name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc")))


def clip_model_signature(clip_len: int, class_names: list[str]) -> ModelSignature:
    """uint8 clips (N, T, H, W, 3) in; a probability per class name and the predicted name out;
    the `video` parameter takes a video path instead (serving/pyfunc.py)."""
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, clip_len, -1, -1, 3))])
    outputs = Schema([*(ColSpec("double", name) for name in class_names), ColSpec("string", "predicted")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec(VIDEO_PARAM, "string", "")]))


# What the packaged code imports when a model is loaded and run, beyond what these bring along
# (mlflow brings scikit-learn, matplotlib, filelock, ...): tests/test_logged_models.py loads a
# model with everything else unimportable.
SERVING_DISTRIBUTIONS = ("mlflow", "torch", "numpy", "pandas", "pyyaml", "opencv-python-headless", "av", "tqdm")


def model_requirements() -> list[str]:
    """The model's Python requirements, pinned to what trained it (given, not inferred: MLflow's
    inference imports the model in a subprocess, seconds per logged model). exptrack itself
    travels in the model (code_paths). A local version label (torch `2.14.1+cpu` from PyTorch's
    own index) is left out, as MLflow's inference does: PyPI has no such version."""
    out = []
    for dist in SERVING_DISTRIBUTIONS:
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+', 1)[0]}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def save_clip_model(folder: Path, weights: Path, clip_len: int, class_names: list[str], model_id: str,
                    run_id: str) -> None:
    """Write the pyfunc package of `weights` into `folder` (a fresh path inside a temporary
    folder: the code copy goes beside it), for the LoggedModel `model_id` of run `run_id`."""
    # Any frame size is accepted (resized as in training), so the example is small: a full-size
    # clip as JSON was 13.5 MB per model at 112 px (serving_input_example.json).
    example = np.zeros((1, clip_len, 8, 8, 3), dtype=np.uint8)  # (N, T, H, W, 3)
    code = package_copy(folder.parent / "code")
    mlflow.pyfunc.save_model(
        str(folder), python_model=str(MODEL_CODE), artifacts={"weights": str(weights)},
        code_paths=[str(code)], signature=clip_model_signature(clip_len, class_names),
        input_example=example, pip_requirements=model_requirements(),
        mlflow_model=Model(model_id=model_id, run_id=run_id))
