"""hdnas: hierarchical differentiable NAS for lightweight single-image super-resolution.

The package follows the pipeline: ``core`` (ops, genotypes, networks, cost, data, metrics, the run
scaffold) under the stages ``search`` -> ``train`` -> ``deploy``; ``zoo`` holds reference nets on
the core and ``bench`` the benchmark suites, which nothing in the library imports.
"""

__version__ = "0.1.0"

from hdnas.core.errors import ConfigError, DataError, HdnasError  # noqa: E402,F401
from hdnas.core.genotype import load_genotype  # noqa: E402,F401
from hdnas.core.network import DerivedNet  # noqa: E402,F401
from hdnas.core.weights import load_model  # noqa: E402,F401

__all__ = ["ConfigError", "DataError", "DerivedNet", "HdnasError", "load_genotype", "load_model", "__version__"]
