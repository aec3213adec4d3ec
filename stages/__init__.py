"""The audit's stages, one module each; the runner orders them by their inputs."""

from stages import attribute, clean, cluster, distances, index, report, score, train, transfer  # noqa: F401
