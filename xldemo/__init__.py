"""xldemo: exact, streaming generation for Transformer-XL style x-transformers models."""

from .checkpoint import Checkpoint, build_model, load_checkpoint, save_checkpoint
from .errors import XLDemoError
from .teacher import teacher_forced_logits

__all__ = ["Checkpoint", "XLDemoError", "build_model", "load_checkpoint", "save_checkpoint", "teacher_forced_logits"]
