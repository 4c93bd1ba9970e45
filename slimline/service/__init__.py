"""Filled by the service issue (DESIGN.md section 4)."""
