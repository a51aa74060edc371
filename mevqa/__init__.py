"""mevqa: micro-expression visual question answering with LoRA-tuned vision-language models."""

import time as _time

_IMPORTED = _time.time()  # the earliest mevqa code runs: the package is imported before any command

from importlib.metadata import PackageNotFoundError, version  # noqa: E402

try:
    __version__ = version("mevqa")  # one version, pyproject.toml's
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"


def _process_age() -> float | None:
    """Seconds since the kernel started this process (Linux, 10 ms resolution), or None elsewhere."""
    try:
        with open("/proc/self/stat", "rb") as f:
            # the fields after the command name, which may itself hold spaces and ")"; starttime is field 22
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        import os

        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def process_seconds() -> float:
    """Seconds since this process started, interpreter start-up and every import included: what a user's
    stopwatch (`time mevqa ...`) reads. Where the kernel does not say, since mevqa was first imported."""
    since_import = _time.time() - _IMPORTED
    age = _process_age()
    # a clock that disagrees (a container's uptime of another namespace) must not report less than is known
    return age if age is not None and age >= since_import - 0.05 else since_import
