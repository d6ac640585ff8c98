"""hdnas: hierarchical differentiable NAS for lightweight single-image super-resolution.

Kept import-light on purpose: tools import submodules they need (``hdnas.data``, ``hdnas.supernet``...).
"""

__version__ = "0.1.0"

from hdnas.errors import ConfigError, DataError, HdnasError  # noqa: E402,F401
