"""unhans: audit image datasets for Clever Hans shortcuts (SpRAy at scale)."""

__version__ = "0.1.0"
