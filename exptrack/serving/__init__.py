"""A trained model as an MLflow pyfunc: the model (pyfunc.py), what a logged model holds on disk
(package.py) and its models-from-code entry (entry.py)."""
