"""Where a registry host is reached, and how: scheme, TLS verification, credential key. Pure.

Docker's rules, kept: HTTPS with certificate verification unless told otherwise; a loopback
registry (`localhost`, 127.0.0.0/8, ::1) speaks plain HTTP by default, as Docker treats those as
insecure registries; `docker.io` is served by `registry-1.docker.io`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class Endpoint:
    host: str  # as the user wrote it in the reference: "localhost:5000", "ghcr.io"
    base_url: str  # "http://localhost:5000", "https://registry-1.docker.io"
    verify_tls: bool

    @property
    def scheme(self) -> str:
        return self.base_url.split(":", 1)[0]


def resolve_endpoint(host: str, *, plain_http: bool = False, insecure: bool = False) -> Endpoint:
    """`plain_http` forces HTTP; `insecure` means HTTPS without certificate verification (also on
    loopback, where it is how one reaches a TLS registry with a self-signed certificate)."""
    api_host = DOCKER_HUB_API if host == DOCKER_HUB else host
    if plain_http or (is_loopback(host) and not insecure):
        return Endpoint(host, f"http://{api_host}", verify_tls=False)
    return Endpoint(host, f"https://{api_host}", verify_tls=not insecure)


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 and ::1, with or without a port."""
    name = strip_port(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def strip_port(host: str) -> str:
    """The name or address of `host`, without its port or an IPv6 address's brackets."""
    if host.startswith("["):  # "[::1]:5000"
        end = host.find("]")
        return host[1:end] if end > 0 else host  # "[::1" names nothing: left as it is
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() and ":" not in name else host
