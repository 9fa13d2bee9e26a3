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
