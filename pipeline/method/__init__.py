"""The method: LRP attribution, distances between relevance maps, spectral clustering, model probes,
the statistics behind the scores, training, and the manifest's rules (docs/methods.md)."""
