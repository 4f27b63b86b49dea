"""exptrack's own errors beside DataError (bad input files, exptrack/data/errors.py): the CLI
reports each of them in one line, without a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file, study file or override that does not fit the schema; the message names the
    file or the key."""


class ModelError(ValueError):
    """A model reference (models:/, runs:/, run id, checkpoint file) or a run's artifacts that
    cannot be used; the message names the reference."""


class TuneFailed(RuntimeError):
    """A study in which no trial completed: nothing to report or register."""


class OutputError(ValueError):
    """An output folder that cannot be used (e.g. an explicit --save-dir that already holds files)."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (full disk, read-only folder): the run stops, FAILED,
    and `train --resume` continues it once the cause is fixed."""


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used (not reachable, not MLflow, not a database, read-only:
    found before any work), or the server did not take a finished run's queued updates in time
    (the run's checkpoints hold them, and `train --resume` delivers them later)."""
