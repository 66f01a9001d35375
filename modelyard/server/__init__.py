"""The HTTP server: Ollama's API, OpenAI's API, /health, /api/status and /metrics (FastAPI)."""
