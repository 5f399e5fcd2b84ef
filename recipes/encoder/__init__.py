"""Masked-language-model (encoder) recipe: ``python recipes/encoder/train.py fit --config recipes/encoder/configs/tiny.yaml``."""
