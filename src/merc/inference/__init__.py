"""Applying trained models to new conversations: model bundles and ``merc predict``.

- :mod:`merc.inference.bundle`: one self-contained, pickle-free file (or folder) holding
  a trained model's weights, its resolved configuration, label names, how its input
  features were made and the training split's standardisation statistics
  (``merc bundle RUN_DIR --out model.merc``).
- :mod:`merc.inference.inputs`: the conversations to predict: merc's native folder, or a
  simple CSV / JSONL / text transcript of utterances.
- :mod:`merc.inference.predict`: features made as at training time, the model run in
  evaluation mode, one prediction per utterance (``merc predict``).

This package sits above :mod:`merc.training` (it reads run folders); nothing below it
imports it.
"""
