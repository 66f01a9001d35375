"""What each API makes of the runner's embeddings (the model's own pooled vectors).

Ollama's /api/embed and OpenAI's /v1/embeddings return unit vectors, and a vector cut to fewer
`dimensions` is normalised again (Matryoshka-style truncation); Ollama's legacy /api/embeddings
returns the vector as the model made it.
"""

from __future__ import annotations

import math


def l2_normalised(vector: list[float]) -> list[float]:
    """`vector` scaled to length 1 (a zero vector stays as it is)."""
    norm = math.sqrt(math.fsum(v * v for v in vector))
    return [v / norm for v in vector] if norm > 0 else vector


def unit_vector(vector: list[float], dimensions: int | None = None) -> list[float]:
    """The first `dimensions` values (all where it is unset, not positive, or not fewer than the
    vector has), normalised."""
    if dimensions is not None and 0 < dimensions < len(vector):
        vector = vector[:dimensions]
    return l2_normalised(vector)
