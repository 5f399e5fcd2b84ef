"""What the recipes share: byte tokenizer, corpora and data modules, the transformer, reporting callbacks, the CLI."""

from recipes.common.callbacks import PlotLossCurves, SampleText, TrainingReport
from recipes.common.cli import RecipeCLI, auto_precision
from recipes.common.data import CausalLMDataModule, MaskedLMDataModule, TextDataModule, load_corpus
from recipes.common.model import ATTENTION_IMPLS, COMPILE_MODES, CompiledTraining, Transformer
from recipes.common.optim import configure_adamw
from recipes.common.tokenizer import ByteTokenizer

__all__ = [
    "ATTENTION_IMPLS",
    "COMPILE_MODES",
    "ByteTokenizer",
    "CompiledTraining",
    "CausalLMDataModule",
    "MaskedLMDataModule",
    "PlotLossCurves",
    "RecipeCLI",
    "SampleText",
    "TextDataModule",
    "TrainingReport",
    "Transformer",
    "auto_precision",
    "configure_adamw",
    "load_corpus",
]
