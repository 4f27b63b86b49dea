"""MLflow "models from code" entry of an exptrack model: `mlflow.pyfunc.load_model` runs this
file (copied into every logged model, serving/package.py) instead of unpickling an object."""

from mlflow.models import set_model

from exptrack.serving.pyfunc import ClipClassifier

set_model(ClipClassifier())
