"""xldemo: exact, streaming generation for Transformer-XL style x-transformers models."""

from .checkpoint import Checkpoint, average_checkpoints, build_model, load_checkpoint, save_checkpoint
from .details import TokenDetails
from .engine import (Finished, GenerationSettings, SegmentStarted, Started, Token, WarmupProgress, generate,
                     segment_table)
from .errors import XLDemoError
from .importer import ImportSettings, import_checkpoint
from .teacher import bits_per_token, teacher_forced_logits

__all__ = ["Checkpoint", "Finished", "GenerationSettings", "ImportSettings", "SegmentStarted", "Started", "Token",
           "TokenDetails", "WarmupProgress", "XLDemoError", "average_checkpoints", "bits_per_token", "build_model",
           "generate", "import_checkpoint", "load_checkpoint", "save_checkpoint", "segment_table",
           "teacher_forced_logits"]
