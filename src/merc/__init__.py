"""merc: multimodal emotion recognition in conversation.

One conversation schema (:mod:`merc.data`), offline feature extractors
(:mod:`merc.features`), a registry of models with one output contract
(:mod:`merc.models`), one trainer with plug-in hooks (:mod:`merc.training`) and honest
evaluation (:mod:`merc.evaluation`).
"""

__version__ = "0.1.0"
