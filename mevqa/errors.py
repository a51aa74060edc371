"""Errors a user can fix. The CLI prints these as one line and exits 2; anything else is a bug."""


class MevqaError(Exception):
    """Base class: the message names the input and says what is wrong with it."""

    exit_code = 2  # the CLI's exit status: 2 = fix the input


class InputError(MevqaError):
    """A path, clip, data file or argument the user gave is missing or unreadable."""


class ModelError(MevqaError):
    """A model directory, processor or adapter cannot be used as asked."""


class MissingDependency(MevqaError):
    """An optional package (vllm, gradio, langchain, bitsandbytes) is needed but not installed."""
