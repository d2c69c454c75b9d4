"""Metrics, multi-seed aggregation and reports."""
