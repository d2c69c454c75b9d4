"""Conversation schema, dataset registry, readers, synthetic data and batching."""

from merc.data.registry import list_datasets, load_dataset, register_dataset
from merc.data.schema import MODALITIES, Conversation, MercDataset, parse_modalities

__all__ = [
    "MODALITIES",
    "Conversation",
    "MercDataset",
    "list_datasets",
    "load_dataset",
    "parse_modalities",
    "register_dataset",
]
