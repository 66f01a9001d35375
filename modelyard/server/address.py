"""Where the server is: `$MODELYARD_HOST` or `--host`, read as Ollama reads `OLLAMA_HOST` (pure).

`127.0.0.1:11434`, `0.0.0.0`, `:8080`, `::1`, `[::1]:8080`, `http://host:8080`, `https://host/prefix`.
Without a scheme the port defaults to 11434; with one, to the scheme's own (80 for http, 443 for
https), as Ollama's envconfig.Host does and as a URL means. The scheme and a path are kept for
clients, which may reach the server through a TLS proxy; the server itself speaks plain HTTP.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from modelyard.errors import ModelyardError

DEFAULT_PORT = 11434
_SCHEME_PORTS = {"http": 80, "https": 443}
# A host name or an IPv4 address: no space, and nothing a URL gives another meaning (a trailing
# dot and names beyond ASCII are names too).
_HOST_NAME = re.compile(r"[^\s/?#@\[\]:%]+")
_USERINFO = re.compile(r"^((?:[A-Za-z]+://)?)[^/@]*@")  # `user:pw@` before the host


class BadHostError(ModelyardError, ValueError):
    pass


@dataclass(frozen=True)
class ServerAddress:
    scheme: str  # http | https
    host: str  # a name or an address, IPv6 without brackets
    port: int
    path: str = ""  # a prefix the server is reached under (a proxy's), without its trailing "/"

    @property
    def url(self) -> str:
        """The base URL clients put API paths after."""
        # An IPv6 zone (`fe80::1%eth0`) is written %25 in a URL.
        host = f"[{self.host.replace('%', '%25')}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_address(text: str, source: str = "$MODELYARD_HOST") -> ServerAddress:
    """`text` (from `source`, which errors name) as a server address; BadHostError if it is none."""

    def bad(problem: str, hint: str = "; expected HOST[:PORT], like 127.0.0.1:11434") -> BadHostError:
        shown = _USERINFO.sub(r"\1***@", text)  # credentials given in it are never repeated
        return BadHostError(f"{source}={shown!r}: {problem}{hint}")

    value = text.strip()
    scheme, found, rest = value.partition("://")
    if not found:
        scheme, rest = "http", value
        default_port = DEFAULT_PORT
    elif scheme.lower() in _SCHEME_PORTS:
        scheme = scheme.lower()
        default_port = _SCHEME_PORTS[scheme]
    else:
        raise bad(f"the scheme must be http or https, not {scheme!r}")
    hostport, slash, path = rest.partition("/")
    if found and not hostport:
        raise bad("no host after the scheme")
    if "@" in hostport:  # a diff review: `user:pw@proxy:8080` was said to be an unbracketed IPv6
        raise bad("credentials do not go in the address; set $MODELYARD_API_KEY", hint="")
    try:
        host, port_text = _split_host_port(hostport)
    except ValueError as exc:  # its message has an example of its own
        raise bad(str(exc), hint="") from None
    if not host:
        host = "127.0.0.1"
    elif ":" not in host and not _HOST_NAME.fullmatch(host):
        raise bad(f"{host!r} is not a host name or address")
    if port_text is None:
        port = default_port
    elif port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise bad(f"the port must be a number from 1 to 65535, not {port_text!r}")
    return ServerAddress(scheme, host, port, ("/" + path).rstrip("/") if slash else "")


def _split_host_port(hostport: str) -> tuple[str, str | None]:
    """(host, the port's text or None); ValueError saying what is wrong with an IPv6 address."""
    if hostport.startswith("["):
        inside, closed, after = hostport[1:].partition("]")
        if not closed or not _is_ipv6(inside) or (after and not after.startswith(":")):
            raise ValueError(f"{hostport!r} is not an IPv6 address in brackets, like [::1]:11434")
        return inside, after[1:] if after else None
    if hostport.count(":") > 1:  # a bare IPv6 address, as Ollama takes one: no port
        if not _is_ipv6(hostport):
            raise ValueError("an IPv6 address with a port goes in brackets, like [::1]:11434")
        return hostport, None
    host, colon, port = hostport.partition(":")
    return host, port if colon else None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
