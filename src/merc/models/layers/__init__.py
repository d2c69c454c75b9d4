"""Shared building blocks, one concept per file."""
