"""The CLI's small API client: a server that answers too slowly is a clear error, not a traceback."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from modelyard.cli_serving import ApiClient, ApiTimeout


@pytest.fixture
def slow_server() -> Iterator[str]:
    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            time.sleep(2)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_slower_than_the_timeout_is_an_api_timeout(slow_server: str) -> None:
    client = ApiClient(slow_server, None, timeout=0.3)
    try:
        with pytest.raises(ApiTimeout, match="did not answer within"):
            client.post("/api/generate", {"model": "m", "keep_alive": 0})
        with pytest.raises(ApiTimeout):
            list(client.stream("/api/chat", {"model": "m"}))
    finally:
        client.close()
