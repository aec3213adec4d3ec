"""The audit's stages, one module each, registered in run order (see pipeline.runner)."""

from stages import attribute, clean, cluster, distances, index, report, score, train  # noqa: F401
