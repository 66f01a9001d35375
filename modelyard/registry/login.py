"""`modelyard login` / `logout`: check credentials against the registry, then keep them (or forget
them) as `docker login` does."""

from __future__ import annotations

from modelyard.errors import RegistryAuthError
from modelyard.registry.credentials import Credentials, registry_host
from modelyard.registry.options import RegistryOptions
from modelyard.registry.session import RegistrySession, error_for


def login(host: str, credentials: Credentials, options: RegistryOptions) -> str:
    """Verify `credentials` with `GET /v2/` (through the registry's Basic or token challenge) and
    store them; returns where they were stored. Raises RegistryAuthError if refused.
    `host` may be written as docker login takes it: a URL, or with a path (both dropped)."""
    host = registry_host(host)
    endpoint = options.endpoint(host)  # as push and pull reach it (an audit: login ignored the $… lists)
    try:
        with RegistrySession(
            endpoint, lambda: credentials, retry=options.retry, transport=options.transport
        ) as session:
            response = session.request("GET", "/v2/")
            if response.status_code != 200:
                raise error_for(response, f"login to {host}")
    except RegistryAuthError as refused:  # from login itself, "run modelyard login" is no help
        hint = "Check the username and the password or token; nothing was stored."
        raise RegistryAuthError(host, refused.detail, hint) from None
    return options.credentials().save(host, credentials)


def logout(host: str, options: RegistryOptions) -> bool:
    """Forget the credentials stored for `host`; False if there were none."""
    return options.credentials().erase(host)
