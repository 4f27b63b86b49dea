"""exptrack: experiment tracking for exercise recognition in video (C3D, MLflow, Optuna)."""

__version__ = "0.1.0"
