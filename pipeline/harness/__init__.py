"""Checks of the method against planted truth: `unhans validate`, `unhans verify`, P-ClArC, the detectors
compared, and `unhans poison`'s copy writer (docs/validation.md)."""
