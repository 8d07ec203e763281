"""Errors a user can cause. The CLI prints their message as one line and exits 2."""


class FtuneError(Exception):
    """Base class: a problem with the user's input, named with its place and its fix."""


class ConfigError(FtuneError):
    """A config file or override that cannot be used."""


class DataError(FtuneError):
    """A data file, column or label that cannot be used."""


class ModelError(FtuneError):
    """A model that cannot be found or loaded."""


class RunError(FtuneError):
    """A run directory that is missing, incomplete or already in use."""


class PushError(FtuneError):
    """A push the hub refused or could not receive: no token, no permission, no network."""


class RunPruned(Exception):
    """Raised by a training `on_evaluate` hook to end a run whose scores are not worth finishing (a tuning trial
    pruned); the run is marked `pruned`. Not a user error."""


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved; `--resume` continues from it.

    Not a KeyboardInterrupt: the CLI framework would swallow that before ftune can say how to continue."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
