"""Readers for published feature files and merc's own on-disk format."""
