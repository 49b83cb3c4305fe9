"""User-facing errors: one line, naming the key, file or value, and how to fix it."""


class ConfigError(ValueError):
    """A bad setting, path or input. The CLI prints it on one line and exits with code 2."""


class TrainingDiverged(RuntimeError):
    """Training met too many non-finite losses in a row; the last good checkpoint is left intact."""
