"""HTTP to one registry: authentication challenges, retries with backoff, and errors in
modelyard's terms. Every other module talks to a registry through `RegistrySession.request`.

Authentication follows the distribution spec's token flow and Docker's habits:
- a request goes out with the authorization last granted for its scope (so a streamed upload is
  not refused halfway and sent twice);
- on 401 the `WWW-Authenticate` challenge decides: `Basic` (an htpasswd registry) sends the
  user's credentials from then on; `Bearer` fetches a token from the realm for the challenged
  service and scope: with the user's credentials when they have some for the host (Basic to the
  realm, or an OAuth2 refresh-token POST for an `identitytoken`), anonymously otherwise;
- credentials are looked up lazily, on the first challenge, so a public pull never runs a
  credential helper; tokens are cached per scope and replaced when the registry refuses them.

Retries: network errors, 408, 429 and 5xx, with capped, jittered backoff (`retry.py`); a request
body must therefore be bytes or a `Body` that can be produced again.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlencode

import httpx

from modelyard.errors import RegistryAuthError, RegistryError, RegistryProtocolError, RegistryUnavailableError
from modelyard.registry.challenge import Challenge, parse_challenges
from modelyard.registry.credentials import Credentials
from modelyard.registry.endpoint import Endpoint
from modelyard.registry.retry import DEFAULT_RETRY, RetryPolicy, is_retryable_status, retry_delay
from modelyard.registry.speed import DEFAULT_LOW_SPEED, LowSpeed, SpeedWatch

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
USER_AGENT = "modelyard"
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}

CredentialLookup = Callable[[], "Credentials | None"]


class Body(Protocol):
    """A request body that can be produced again for a retry: `length` bytes from a fresh iterator."""

    length: int

    def __iter__(self) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class _Grant:
    header: str = field(repr=False)  # "Bearer <token>" or "Basic <user:password>": a secret
    anonymous: bool


class BodyTooSlow(Exception):
    """A body brought fewer bytes in a window than the low-speed limit asks (`done` in all)."""

    def __init__(self, low: LowSpeed, done: int) -> None:
        super().__init__(
            f"the answer came at {low.describe()} ($MODELYARD_REGISTRY_LOW_SPEED_LIMIT=0 waits for any link)"
        )
        self.low = low
        self.done = done


class RegistrySession:
    def __init__(
        self,
        endpoint: Endpoint,
        credentials: CredentialLookup = lambda: None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        low_speed: LowSpeed = DEFAULT_LOW_SPEED,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.retry = retry
        self.low_speed = low_speed
        self._clock = clock
        self._lookup_credentials = credentials
        self._credentials: Credentials | None = None
        self._looked_up = False
        self._sleep = sleep
        self._rand = rand
        self._lock = threading.Lock()
        self._grants: dict[str, _Grant] = {}  # scope -> authorization to send
        self._basic = False  # the registry asked for Basic: send it on every request
        self.http = httpx.Client(
            base_url=endpoint.base_url,
            verify=ssl.create_default_context() if endpoint.verify_tls else False,
            timeout=timeout,
            follow_redirects=True,  # blob GETs may redirect to storage; httpx drops Authorization off-origin
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistrySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host(self) -> str:
        return self.endpoint.host

    # --- requests --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        scope: str = "",
        headers: Mapping[str, str] | None = None,
        content: bytes | Body | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with authentication and retries. Returns any response that is not transient (the
        caller reads 404, 400…); raises RegistryUnavailableError once transient failures persist and
        RegistryAuthError when the registry keeps refusing. A streamed response must be closed."""
        attempt = 0
        while True:
            try:
                response = self._send_authorized(method, url, scope, headers, content, stream)
            except (httpx.TooManyRedirects, httpx.DecodingError, httpx.UnsupportedProtocol) as exc:
                # The registry's answer, not the network: a redirect loop, a body whose encoding
                # lies, a redirect to file://. Raw, they failed a whole reconcile round (a registry
                # review), and no retry mends them.
                raise RegistryProtocolError(f"registry {self.host}: {_describe_answer_error(exc)}") from None
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.ConnectError) and _is_tls_failure(exc):
                    raise RegistryUnavailableError(self.host, _tls_advice(self.endpoint)) from None
                delay = retry_delay(self.retry, attempt, network_error=True, rand=self._rand())
                if delay is None:
                    raise RegistryUnavailableError(self.host, _describe_network_error(exc)) from None
                log.debug("%s %s: %s; retrying in %.2fs", method, _path(url), type(exc).__name__, delay)
            else:
                delay = retry_delay(
                    self.retry,
                    attempt,
                    status=response.status_code,
                    retry_after=response.headers.get("Retry-After"),
                    rand=self._rand(),
                )
                if delay is None:
                    if is_retryable_status(response.status_code):
                        detail = f"HTTP {response.status_code} {describe_error_body(read_small(response))}"
                        response.close()
                        raise RegistryUnavailableError(self.host, detail.strip())
                    return response
                response.close()
                log.debug(
                    "%s %s: HTTP %d; retrying in %.2fs", method, _path(url), response.status_code, delay
                )
            self._sleep(delay)
            attempt += 1

    def body(self, response: httpx.Response) -> Iterator[bytes]:
        """A streamed response's body, chunk by chunk; raises BodyTooSlow once a window of the
        low-speed limit brings too few bytes (a read timeout alone never ends a trickle)."""
        watch = SpeedWatch(self.low_speed, self._clock())
        done = 0
        for chunk in response.iter_bytes():
            done += len(chunk)
            moved = watch.moved(done, self._clock())
            if moved is None:
                raise BodyTooSlow(self.low_speed, done)
            watch = moved
            yield chunk

    def wait_to_retry(self, attempt: int, error: httpx.TransportError | BodyTooSlow | None) -> None:
        """Back off before resuming a transfer that broke mid-body, or raise once retries are spent."""
        delay = retry_delay(self.retry, attempt, network_error=True, rand=self._rand())
        if isinstance(error, BodyTooSlow):
            what = str(error)
        elif error is not None:
            what = _describe_network_error(error)
        else:
            what = "the connection ended early"
        if delay is None:
            raise RegistryUnavailableError(self.host, what)
        log.debug("%s; resuming in %.2fs", what, delay)
        self._sleep(delay)

    def _send_authorized(
        self,
        method: str,
        url: str,
        scope: str,
        headers: Mapping[str, str] | None,
        content: bytes | Body | None,
        stream: bool,
    ) -> httpx.Response:
        grant = self._grant_for(scope)
        response = self._send(method, url, headers, content, stream, grant)
        if response.status_code != 401:
            return response
        challenge = _pick_challenge(response)
        response.close()
        if challenge is None:
            raise RegistryAuthError(self.host, "the registry refused the request and sent no challenge")
        grant = self._answer(challenge, scope, refused=grant)
        response = self._send(method, url, headers, content, stream, grant)
        if response.status_code == 401:
            response.close()
            raise RegistryAuthError(self.host, _refusal(grant))
        return response

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        content: bytes | Body | None,
        stream: bool,
        grant: _Grant | None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if grant is not None and _same_origin(self.http.base_url, url):
            # Only to the registry itself: an upload Location naming another host or scheme (a
            # storage backend, or a registry that wants the password) gets no credentials, as
            # httpx drops them from redirects.
            all_headers["Authorization"] = grant.header
        body: bytes | Iterator[bytes] | None
        if content is None or isinstance(content, bytes):
            body = content
        else:
            all_headers["Content-Length"] = str(content.length)
            body = iter(content)
        request = self.http.build_request(method, url, headers=all_headers, content=body)
        log.debug("%s %s", method, _path(url))
        response = self.http.send(request, stream=stream)
        log.debug("%s %s -> %d", method, _path(url), response.status_code)
        return response

    # --- authorization ---------------------------------------------------------------------------

    def _grant_for(self, scope: str) -> _Grant | None:
        with self._lock:
            if self._basic and self._credentials is not None:
                return _Grant(self._credentials.basic(), anonymous=False)
            return self._grants.get(scope)

    def _answer(self, challenge: Challenge, scope: str, refused: _Grant | None) -> _Grant:
        with self._lock:
            current = self._grants.get(scope)
            if current is not None and current != refused:
                return current  # another thread already answered this challenge
            credentials = self._credentials_once()
            if challenge.scheme == "basic":
                if credentials is None or not credentials.username:
                    raise RegistryAuthError(self.host, "the registry requires a login")
                self._basic = True
                return _Grant(credentials.basic(), anonymous=False)
            if challenge.scheme != "bearer" or not challenge.realm:
                raise RegistryAuthError(self.host, f"unsupported authentication scheme {challenge.scheme!r}")
            grant = self._fetch_token(challenge, credentials)
            self._grants[scope] = grant
            return grant

    def _credentials_once(self) -> Credentials | None:
        if not self._looked_up:
            self._credentials = self._lookup_credentials()
            self._looked_up = True
        return self._credentials

    def _fetch_token(self, challenge: Challenge, credentials: Credentials | None) -> _Grant:
        realm = str(challenge.realm)
        plain_realm = httpx.URL(realm).scheme != "https"
        if credentials is not None and self.http.base_url.scheme == "https" and plain_realm:
            # The login would go in the clear to where the registry's answer points.
            where = httpx.URL(realm)
            raise RegistryAuthError(
                self.host,
                f"its token service {where.scheme}://{where.host} is not https: no login sent there",
            )
        # Several scopes (a cross-repository mount) go as repeated `scope` parameters, as docker sends them.
        params: list[tuple[str, str | int | float | bool | None]] = (
            [("service", challenge.service)] if challenge.service else []
        )
        params += [("scope", scope) for scope in (challenge.scope or "").split()]
        anonymous = credentials is None
        log.debug("requesting a %s token from %s", "anonymous" if anonymous else "user", realm)
        try:
            if credentials is not None and credentials.identity_token:
                form = [*params, ("grant_type", "refresh_token"), ("client_id", USER_AGENT)]
                form.append(("refresh_token", credentials.identity_token))
                response = self.http.post(realm, content=urlencode(form).encode(), headers=_FORM)
            else:
                headers = {"Authorization": credentials.basic()} if credentials is not None else {}
                response = self.http.get(realm, params=params, headers=headers)
        except httpx.TransportError as exc:  # retried as the registry's own, but named as its
            where = httpx.URL(realm)
            service = f"{where.scheme}://{where.netloc.decode()}"
            raise _TokenServiceUnreachable(
                f"its token service {service} cannot be reached ({exc})", request=exc.request
            ) from None
        if response.status_code in (401, 403):
            detail = (
                "the token service requires a login"
                if anonymous
                else "the token service refused the credentials"
            )
            raise RegistryAuthError(self.host, detail)
        if response.status_code != 200:
            if is_retryable_status(response.status_code):
                raise RegistryUnavailableError(
                    self.host, f"token service answered HTTP {response.status_code}"
                )
            raise RegistryAuthError(self.host, f"token service answered HTTP {response.status_code}")
        try:
            value = response.json()
            token = value.get("token") or value.get("access_token")
        except (json.JSONDecodeError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(self.host, "the token service sent no token")
        return _Grant(f"Bearer {token}", anonymous=anonymous)


# --- helpers -------------------------------------------------------------------------------------


def _pick_challenge(response: httpx.Response) -> Challenge | None:
    challenges = [
        c for value in response.headers.get_list("WWW-Authenticate") for c in parse_challenges(value)
    ]
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return challenges[0] if challenges else None


def _refusal(grant: _Grant) -> str:
    if grant.anonymous:
        return "not logged in, and anonymous access is not allowed"
    return "the registry refused the credentials"


# How long an error body is read for its message: a trickle held the error itself (a review).
READ_SMALL_S = 10.0


def read_small(response: httpx.Response, limit: int = 64 * 1024) -> bytes:
    """At most `limit` bytes of a response body, for an error message, within READ_SMALL_S (then
    what came); never raises."""
    try:
        if response.is_stream_consumed:
            return response.content[:limit]
        data = b""
        until = time.monotonic() + READ_SMALL_S
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= limit or time.monotonic() > until:
                break
        return data[:limit]
    except (httpx.HTTPError, httpx.StreamError):
        return b""


def describe_error_body(body: bytes) -> str:
    """The codes and messages of a distribution-spec error body (`{"errors":[…]}`), in one line."""
    try:
        errors = json.loads(body).get("errors")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return ""
    if not isinstance(errors, list):
        return ""
    parts = []
    for error in errors[:3]:
        if isinstance(error, dict):
            code, message = str(error.get("code", "")), str(error.get("message", ""))
            parts.append(f"{code}: {message}" if code and message else code or message)
    return "; ".join(p for p in parts if p)[:300]


def error_for(response: httpx.Response, what: str) -> RegistryError:
    """A RegistryError for a response that is neither success nor a case the caller handles."""
    body = read_small(response)
    detail = describe_error_body(body)
    response.close()
    message = f"{what}: the registry answered HTTP {response.status_code}"
    # Go's net/http answers so on a TLS port; we spoke HTTP because the host is loopback. A HEAD
    # (push's first request: does the blob exist?) gets the 400 without the body that says why.
    https_port = HTTPS_ONLY_ANSWER in body or (
        response.request.method == "HEAD" and response.status_code == 400 and not body
    )
    if response.url.scheme == "http" and https_port:
        return RegistryError(
            f"{message}: it speaks HTTPS, and a loopback registry is reached over plain HTTP unless "
            "told otherwise. Pass --insecure (`insecure: true` over the API: HTTPS without "
            "certificate verification, for a self-signed certificate)"
        )
    return RegistryError(message + (f" ({detail})" if detail else ""))


HTTPS_ONLY_ANSWER = b"Client sent an HTTP request to an HTTPS server"


def _path(url: str) -> str:
    return httpx.URL(url).path if "://" in url else url.split("?", 1)[0]


def _is_tls_failure(exc: httpx.ConnectError) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return "SSL" in str(exc) or "certificate" in str(exc).lower()


def _tls_advice(endpoint: Endpoint) -> str:
    if endpoint.verify_tls:
        return (
            "TLS handshake or certificate verification failed; use --insecure (`insecure: true` over "
            "the API) to skip verification, "
            "or --plain-http if the registry speaks plain HTTP (for every command and `serve --spec`: "
            f"$MODELYARD_INSECURE_REGISTRIES or $MODELYARD_PLAIN_HTTP_REGISTRIES={endpoint.host})"
        )
    return (
        "TLS handshake failed; use --plain-http if the registry speaks plain HTTP (for every command "
        f"and `serve --spec`: $MODELYARD_PLAIN_HTTP_REGISTRIES={endpoint.host})"
    )


def _describe_answer_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TooManyRedirects):
        return "it redirects in a loop (too many redirects)"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return f"it redirects where HTTP cannot follow ({exc})"
    return f"its answer does not decode ({exc})"


class _TokenServiceUnreachable(httpx.TransportError):
    """The token service the registry names could not be reached: retried as the registry's
    network errors are, and named once the tries are spent (said as the registry's own, the error
    asked whether the registry was running)."""


def _describe_network_error(exc: httpx.TransportError) -> str:
    if isinstance(exc, _TokenServiceUnreachable):
        return str(exc)
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc}); is the registry running and the address right?"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


def _same_origin(base: httpx.URL, url: str) -> bool:
    """Whether `url` (a path, or absolute) goes to the scheme, host and port of `base` (pure)."""
    target = httpx.URL(url)
    if not target.is_absolute_url:
        return True
    defaults = {"http": 80, "https": 443}
    return (target.scheme, target.host, target.port or defaults.get(target.scheme)) == (
        base.scheme,
        base.host,
        base.port or defaults.get(base.scheme),
    )
