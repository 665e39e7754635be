"""pretrainlab: an AI research lab for LLM pre-training.

The package is a small GPT pre-training harness (model/, train/, data/, eval.py) plus the
parts that run research on it. Start with `pretrainlab recipes` and `pretrainlab train`.
"""

__version__ = "0.1.0"
