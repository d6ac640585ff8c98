"""Stage 1, search: the supernet, the architect (bilevel step), derivation, and the search loop."""
