"""Errors that users see: each names the file or field at fault, so tools can print it without a traceback."""

import warnings


class HdnasError(Exception):
    """Base class for every error hdnas raises on purpose."""


class DataError(HdnasError):
    """A data folder or image is missing, unreadable or unusable."""


class ConfigError(HdnasError):
    """A config, search space or genotype field is wrong."""


class WeightsError(HdnasError):
    """A checkpoint or state dict does not hold weights that fit the net asked for."""


class DataNote(UserWarning):
    """Input that was usable only after a change the user should know of (an image converted to RGB)."""


def show_warnings_plainly() -> None:
    """Tools print warnings as one line, ``warning: …``, as they print ``error: …``."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
