"""edgellm: run quantized GGUF language models on edge hardware from the command line."""

__version__ = "0.1.0"
