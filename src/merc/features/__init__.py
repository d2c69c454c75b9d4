"""Offline feature extractors writing cached feature files."""
