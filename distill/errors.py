"""Errors a user can cause and fix: the CLI turns each into one line and exit code 2."""


class DistilleryError(Exception):
    """A problem with the user's input (config, data, checkpoint), not a bug in Distillery."""

    exit_code = 2


class ConfigError(DistilleryError):
    """A config key, type or value that cannot be used."""


class DataError(DistilleryError):
    """A data set that is missing, truncated or otherwise unusable."""


class CheckpointError(DistilleryError):
    """A checkpoint that is missing, tampered with or does not fit the requested model."""


class TrainingError(DistilleryError):
    """A failure during the run that retrying cannot fix, such as a NaN loss."""

    exit_code = 1


class RayStartError(DistilleryError):
    """A local Ray instance that did not start (an overloaded machine, for one): the machine's state, not the
    input's, so exit code 1, as for a full disk."""

    exit_code = 1
