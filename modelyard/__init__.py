"""modelyard: Docker for local LLMs.

Modelfiles build into OCI images in a local store, travel through any OCI registry, and are
served by llama.cpp runners behind the Ollama and OpenAI HTTP APIs.
"""

__version__ = "0.1.0"
