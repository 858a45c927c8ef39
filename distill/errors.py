"""Domain errors of the offline job. The CLI maps every one of them to exit code 2."""


class DistillError(Exception):
    """A user-facing error: bad input or a failed check. The message names the bad value and the fix."""


class DatasetError(DistillError):
    """A dataset spec that cannot be parsed, or a file that is missing or malformed."""


class ConfigError(DistillError):
    """An unknown name, an out-of-range value, or an unknown key in a config."""


class ParityError(DistillError):
    """The exported ONNX student does not reproduce the torch student."""


class TrainingError(DistillError):
    """Training produced no usable model (no finite validation score in any epoch)."""
