"""Modelfiles (Ollama syntax and a YAML form) and the building of images from them."""
