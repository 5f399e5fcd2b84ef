"""Decoder-only (GPT) language-model recipe: ``python recipes/gpt/train.py fit --config recipes/gpt/configs/tiny.yaml``."""
