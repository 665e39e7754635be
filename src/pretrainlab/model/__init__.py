"""The GPT model (see gpt.py for the architecture and initialisation)."""

from .gpt import GPT

__all__ = ["GPT"]
