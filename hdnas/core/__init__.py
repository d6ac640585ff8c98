"""The shared core every stage builds on: the op registry, genotypes, networks, exact cost, data,
metrics, tiled inference, rendering and the run scaffold. It imports no stage."""
