"""GGUF in and out: pretrained models shipped as GGUF files (llama.cpp's format) as a model source,
and unlearned models written back as GGUF files that llama.cpp and Ollama run.

- ``sources``: what a MODEL argument names (a ``.gguf`` path or a packaged-model shortcut) and
  checks that the file is a GGUF transformers can read;
- ``convert``: the file dequantised once into a cached transformers folder, keyed by its sha256;
- ``export``: a transformers model written as GGUF through the ``gguf`` package's writer.
"""
