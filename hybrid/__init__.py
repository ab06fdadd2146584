"""hybrid: a local-plus-cloud LLM inference router with one OpenAI-compatible endpoint."""

__version__ = "0.1.0"
