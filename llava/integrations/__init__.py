"""Bridges to other evaluation frameworks (optional extras; nothing here is imported by the core)."""
