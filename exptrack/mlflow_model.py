"""MLflow "models from code" entry of an exptrack model: `mlflow.pyfunc.load_model` runs this
file (copied into every logged model) instead of unpickling an object."""

from mlflow.models import set_model

from exptrack.serving import ClipClassifier

set_model(ClipClassifier())
