"""One error type for everything a user can get wrong.

The CLI prints ``str(err)`` as one line on stderr and exits with code 2, so every message names the
culprit (the file, the id, the config key) and what was expected.
"""


class SegnetError(Exception):
    """A user-facing error: bad input, bad config, missing run. Exit code 2, one line."""

    exit_code = 2


class ConfigError(SegnetError):
    """An unknown key, a wrong type or a bad value in the configuration."""


class DataError(SegnetError):
    """A dataset that does not follow the Kaggle layout or disagrees with itself."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or another stop signal) turned into an exception, so cleanup code runs as for Ctrl-C.

    The CLI exits with 128 + the signal number (143 for SIGTERM), as a shell reports a process that
    the signal ended.
    """

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


_stop_signal: int | None = None  # the first stop signal this process received


def stop_requested() -> int | None:
    """The signal that asked this process to stop (SIGINT or SIGTERM), None if none did.

    A signal can surface as another exception: TensorFlow re-raises a KeyboardInterrupt from inside
    its input pipeline as its own error type. Code that must tell "stopped" from "failed" asks here.
    """
    return _stop_signal


def raise_on_sigterm(signum, frame):
    """A SIGTERM handler: raise :class:`Terminated` in the main thread."""
    global _stop_signal
    _stop_signal = _stop_signal or signum
    raise Terminated(signum)


def raise_on_sigint(signum, frame):
    """A SIGINT handler: raise KeyboardInterrupt, as Python's default does, and remember it."""
    global _stop_signal
    _stop_signal = _stop_signal or signum
    raise KeyboardInterrupt
