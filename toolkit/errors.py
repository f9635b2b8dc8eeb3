"""Typed, user-facing errors.

Library code raises these with a message that says what was wrong and what to do; the CLI prints the
message on one line and exits non-zero. Anything else escaping is a bug and shows a traceback.
"""


class ToolkitError(Exception):
    """Base class for errors caused by user input, files or the environment (exit code 2)."""

    exit_code = 2


class DataError(ToolkitError):
    """MNIST files are missing, corrupt or could not be obtained."""


class ConfigError(ToolkitError):
    """An option has a value the toolkit cannot use."""


class CheckpointError(ToolkitError):
    """A checkpoint is missing, corrupt or not a toolkit checkpoint."""


class ArtifactError(ToolkitError):
    """An exported artifact is missing, corrupt, or not a toolkit model."""


class ProviderUnavailable(ToolkitError):
    """The requested ONNX Runtime execution provider (or torch device) cannot be used here."""


class OutputError(ToolkitError):
    """A result file cannot be written (disk full, read-only folder, a folder in the way)."""


class ImageError(ToolkitError):
    """An input image cannot be read or is unreasonable."""


class VerificationFailed(ToolkitError):
    """At least one artifact does not match PyTorch within tolerance (exit code 1)."""

    exit_code = 1


# Exit codes of the `toolkit` command (docs/trust.md lists them); ToolkitError subclasses carry theirs.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # VerificationFailed: the command ran and the models did not pass
EXIT_BAD_INPUT = 2  # any other ToolkitError, usage mistakes, OS errors, out of memory
EXIT_INTERNAL = 3  # an unexpected exception: a bug in toolkit (`--debug` shows the traceback)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM
