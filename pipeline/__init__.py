"""The pipeline: framework (core), data, method, report and validation harness, in layers (docs/architecture.md)."""
