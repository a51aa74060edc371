"""mevqa: micro-expression visual question answering with LoRA-tuned vision-language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mevqa")  # one version, pyproject.toml's
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
