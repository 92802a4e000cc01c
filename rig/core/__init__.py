"""Shared core: clocks, errors, redaction, socket stamping, namespaces (no controller, no sim)."""
