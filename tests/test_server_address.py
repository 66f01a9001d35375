"""$MODELYARD_HOST and --host, read as Ollama reads OLLAMA_HOST (pure, table-driven)."""

from __future__ import annotations

import pytest

from modelyard.server.address import BadHostError, ServerAddress, parse_address


@pytest.mark.parametrize(
    ("text", "expected", "url"),
    [
        pytest.param("", ServerAddress("http", "127.0.0.1", 11434), "http://127.0.0.1:11434", id="empty"),
        pytest.param("0.0.0.0", ServerAddress("http", "0.0.0.0", 11434), "http://0.0.0.0:11434", id="all"),
        pytest.param(
            ":8080", ServerAddress("http", "127.0.0.1", 8080), "http://127.0.0.1:8080", id="port-only"
        ),
        pytest.param(
            " localhost:9 ", ServerAddress("http", "localhost", 9), "http://localhost:9", id="spaces"
        ),
        pytest.param("::1", ServerAddress("http", "::1", 11434), "http://[::1]:11434", id="bare-ipv6"),
        pytest.param("[::1]:8080", ServerAddress("http", "::1", 8080), "http://[::1]:8080", id="ipv6-port"),
        # With a scheme, its own port, as Ollama's envconfig.Host and as a URL means.
        pytest.param("http://box", ServerAddress("http", "box", 80), "http://box:80", id="http-default"),
        pytest.param(
            "HTTPS://box", ServerAddress("https", "box", 443), "https://box:443", id="https-default"
        ),
        # Kept for clients behind a TLS proxy (a CLI review: sent as plain HTTP, API key and all).
        pytest.param(
            "https://box:8443/llm/",
            ServerAddress("https", "box", 8443, "/llm"),
            "https://box:8443/llm",
            id="https-path",
        ),
        pytest.param(
            "model_box:5", ServerAddress("http", "model_box", 5), "http://model_box:5", id="underscore"
        ),
        # A diff review: refused before.
        pytest.param(
            "example.com.:9", ServerAddress("http", "example.com.", 9), "http://example.com.:9", id="fqdn-dot"
        ),
        pytest.param(
            "münchen.example",
            ServerAddress("http", "münchen.example", 11434),
            "http://münchen.example:11434",
            id="unicode",
        ),
        pytest.param(
            "fe80::1%eth0",
            ServerAddress("http", "fe80::1%eth0", 11434),
            "http://[fe80::1%25eth0]:11434",
            id="zone",
        ),
    ],
)
def test_parse_address(text: str, expected: ServerAddress, url: str) -> None:
    assert parse_address(text) == expected
    assert expected.url == url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Port 0 became 11434, Ollama's port (a CLI review).
        pytest.param("127.0.0.1:0", "the port must be a number from 1 to 65535, not '0'", id="port-zero"),
        pytest.param("127.0.0.1:65536", "not '65536'", id="port-too-big"),
        pytest.param("localhost:http", "not 'http'", id="port-name"),
        pytest.param("box:", "not ''", id="port-empty"),
        pytest.param("ftp://box", "the scheme must be http or https, not 'ftp'", id="scheme"),
        pytest.param("http://", "no host after the scheme", id="no-host"),
        pytest.param("not a host", "'not a host' is not a host name or address", id="spaces-inside"),
        pytest.param("::1:8080x", "an IPv6 address with a port goes in brackets", id="ipv6-unbracketed"),
        pytest.param("[::1", "is not an IPv6 address in brackets", id="ipv6-unclosed"),
        pytest.param("[box]:80", "is not an IPv6 address in brackets", id="brackets-not-ipv6"),
        pytest.param("http://user:pw@proxy:8080", "credentials do not go in the address", id="userinfo"),
    ],
)
def test_bad_addresses_name_where_they_came_from(text: str, message: str) -> None:
    with pytest.raises(BadHostError) as caught:
        parse_address(text, "--host")
    assert str(caught.value).startswith(f"--host={text.replace('user:pw', '***')!r}: ")
    assert message in str(caught.value)
    assert "pw" not in str(caught.value), "credentials are never repeated"
