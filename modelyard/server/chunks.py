"""The JSON of each streamed chunk (NDJSON lines, SSE events), as compact as JSON is written.

One encoder for every chunk: `json.dumps` with arguments builds an encoder per call, and streams
write a chunk per token (the same bytes: benchmarks/RESULTS.md, "Where a streamed token's server
CPU goes").
"""

from __future__ import annotations

import json
from typing import Final

compact_json: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
