"""The registry session at its HTTP seam (an injected httpx transport): Basic and Bearer
challenges, tokens per scope, retries and their limits, and credentials kept out of every message.
Also the docker config.json and credential-helper storage of `login`."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from modelyard.errors import (
    CredentialHelperError,
    RegistryAuthError,
    RegistryProtocolError,
    RegistryUnavailableError,
)
from modelyard.registry.credentials import Credentials, DockerConfig, registry_host
from modelyard.registry.endpoint import resolve_endpoint
from modelyard.registry.retry import RetryPolicy
from modelyard.registry.session import RegistrySession
from modelyard.settings import Settings

PASSWORD = "hunter2-Sup3rSecret"
USER = Credentials("alice", PASSWORD)
BASIC = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
REALM = "https://auth.example/token"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.handler(request)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


def session(
    handler: Handler, credentials: Credentials | None = None, **kwargs: object
) -> tuple[RegistrySession, Recorder, list[float]]:
    recorder = Recorder(handler)
    sleeps: list[float] = []
    s = RegistrySession(
        resolve_endpoint("reg.example"),
        lambda: credentials,
        transport=httpx.MockTransport(recorder),
        sleep=sleeps.append,
        rand=lambda: 1.0,
        **kwargs,  # type: ignore[arg-type]
    )
    return s, recorder, sleeps


def bearer_registry(tokens: dict[str | None, str]) -> Handler:
    """A registry whose token service hands `tokens[authorization]` out for any scope, and accepts a
    token for the scope it was issued for."""
    issued: dict[str, str] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            token = tokens.get(request.headers.get("Authorization"))
            if token is None:
                return httpx.Response(401)
            scope = " ".join(request.url.params.get_list("scope"))
            issued[f"{token}-{scope}"] = scope
            return httpx.Response(200, json={"token": f"{token}-{scope}"})
        scope = "repository:ns/m:pull" if request.method in ("GET", "HEAD") else "repository:ns/m:pull,push"
        granted = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if issued.get(granted) is not None and scope in issued[granted]:
            return httpx.Response(200, json={})
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="reg.example",scope="{scope}"'},
        )

    return handle


def test_bearer_anonymous_token_is_fetched_once_per_scope() -> None:
    s, rec, _ = session(bearer_registry({None: "anon"}))
    assert s.request("GET", "/v2/ns/m/manifests/v1", scope="repository:ns/m:pull").status_code == 200
    assert s.request("HEAD", "/v2/ns/m/blobs/x", scope="repository:ns/m:pull").status_code == 200
    assert rec.paths() == [
        "GET /v2/ns/m/manifests/v1",
        "GET /token",
        "GET /v2/ns/m/manifests/v1",
        "HEAD /v2/ns/m/blobs/x",  # the token went along at once
    ]
    token_request = rec.requests[1]
    assert dict(token_request.url.params) == {"service": "reg.example", "scope": "repository:ns/m:pull"}
    assert "Authorization" not in token_request.headers


def test_bearer_with_credentials_and_a_new_token_for_a_wider_scope() -> None:
    s, rec, _ = session(bearer_registry({BASIC: "user"}), USER)
    s.request("GET", "/v2/ns/m/manifests/v1", scope="repository:ns/m:pull")
    response = s.request("PUT", "/v2/ns/m/manifests/v1", scope="repository:ns/m:pull,push", content=b"{}")
    assert response.status_code == 200
    token_requests = [r for r in rec.requests if r.url.host == "auth.example"]
    assert [r.headers["Authorization"] for r in token_requests] == [BASIC, BASIC]
    assert [r.url.params["scope"] for r in token_requests] == [
        "repository:ns/m:pull",
        "repository:ns/m:pull,push",
    ]


def test_bearer_token_refused_later_is_fetched_again() -> None:
    state = {"valid": "t1"}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"access_token": state["valid"]})
        if request.headers.get("Authorization") == f"Bearer {state['valid']}":
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})

    s, rec, _ = session(handle)
    assert s.request("GET", "/v2/").status_code == 200
    state["valid"] = "t2"  # the first token expired
    assert s.request("GET", "/v2/").status_code == 200
    assert [r.url.host for r in rec.requests].count("auth.example") == 2


def test_several_scopes_go_as_repeated_parameters() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "t"})
        if request.headers.get("Authorization") == "Bearer t":
            return httpx.Response(201)
        scope = "repository:ns/b:pull,push repository:ns/a:pull"
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",scope="{scope}"'})

    s, rec, _ = session(handle)
    s.request("POST", "/v2/ns/b/blobs/uploads/?mount=x&from=ns/a", scope="mount")
    assert rec.requests[1].url.params.get_list("scope") == [
        "repository:ns/b:pull,push",
        "repository:ns/a:pull",
    ]


def test_identity_token_is_exchanged_with_an_oauth2_refresh_grant() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
            ok = request.method == "POST" and form == {
                "service": "reg",
                "grant_type": "refresh_token",
                "client_id": "modelyard",
                "refresh_token": "rt-42",
            }
            return httpx.Response(200 if ok else 400, json={"access_token": "t"})
        if request.headers.get("Authorization") == "Bearer t":
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="reg"'})

    s, _, _ = session(handle, Credentials(identity_token="rt-42"))
    assert s.request("GET", "/v2/").status_code == 200


def test_basic_is_sent_up_front_once_the_registry_asked_for_it() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") == BASIC:
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})

    s, rec, _ = session(handle, USER)
    for _ in range(3):
        assert s.request("GET", "/v2/ns/m/tags/list", scope="repository:ns/m:pull").status_code == 200
    body_chunks = iter([b"x" * 10])
    assert s.request("PATCH", "/v2/ns/m/blobs/uploads/1", content=b"".join(body_chunks)).status_code == 200
    assert [r.headers.get("Authorization") for r in rec.requests] == [None, BASIC, BASIC, BASIC, BASIC]


def test_credentials_go_only_to_the_registry_itself() -> None:
    """Found in review: an upload Location naming another host (or plain http) got the user's Basic
    password. It goes to the registry's own scheme, host and port only, as redirects do."""

    def handle(request: httpx.Request) -> httpx.Response:
        registry = (request.url.scheme, request.url.host, request.url.port) == ("https", "reg.example", None)
        if not registry or request.headers.get("Authorization") == BASIC:
            return httpx.Response(202)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})

    s, rec, _ = session(handle, USER)
    s.request("POST", "/v2/ns/m/blobs/uploads/", scope="repository:ns/m:pull,push")
    for elsewhere in (
        "https://storage.example/upload/1",
        "http://reg.example/v2/ns/m/blobs/uploads/1",  # the same host in the clear
        "https://reg.example:8443/v2/ns/m/blobs/uploads/1",
    ):
        s.request("PATCH", elsewhere, content=b"x")
    s.request("PATCH", "https://reg.example/v2/ns/m/blobs/uploads/1", content=b"x")
    sent = [(str(r.url), r.headers.get("Authorization")) for r in rec.requests]
    assert [auth for _, auth in sent] == [None, BASIC, None, None, None, BASIC], sent


def test_no_login_goes_to_a_plain_http_token_service_of_an_https_registry() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://auth.example/token"'})

    s, rec, _ = session(handle, USER)
    with pytest.raises(RegistryAuthError, match=r"token service http://auth\.example is not https"):
        s.request("GET", "/v2/ns/m/tags/list", scope="repository:ns/m:pull")
    assert all(r.url.host == "reg.example" for r in rec.requests), "nothing sent to the token service"


@pytest.mark.parametrize(
    ("challenge", "credentials", "detail"),
    [
        pytest.param('Basic realm="r"', None, "requires a login", id="basic-no-credentials"),
        pytest.param('Basic realm="r"', USER, "refused the credentials", id="basic-wrong-password"),
        pytest.param(
            f'Bearer realm="{REALM}"', None, "token service requires a login", id="bearer-anonymous-refused"
        ),
        pytest.param(
            f'Bearer realm="{REALM}"',
            USER,
            "token service refused the credentials",
            id="bearer-wrong-password",
        ),
        pytest.param("Negotiate", USER, "unsupported authentication scheme", id="unknown-scheme"),
    ],
)
def test_refusals_are_auth_errors_without_secrets(
    challenge: str, credentials: Credentials | None, detail: str, caplog: pytest.LogCaptureFixture
) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED", "message": "no"}]})
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    caplog.set_level(logging.DEBUG)
    s, _, sleeps = session(handle, credentials)
    with pytest.raises(RegistryAuthError, match=detail) as caught:
        s.request("GET", "/v2/ns/m/manifests/v1", scope="repository:ns/m:pull")
    assert "modelyard login reg.example" in str(caught.value)
    assert sleeps == []  # an answer, not a hiccup: never retried
    for text in (str(caught.value), repr(caught.value), caplog.text, repr(credentials)):
        assert PASSWORD not in text and BASIC.split()[1] not in text


@pytest.mark.parametrize(
    ("statuses", "final", "sleeps"),
    [
        pytest.param([503, 502, 200], 200, [0.25, 0.5], id="5xx-then-ok"),
        pytest.param([429, 200], 200, [7.0], id="429-retry-after"),
        pytest.param([404], 404, [], id="404-returned-at-once"),
        pytest.param([400], 400, [], id="400-returned-at-once"),
    ],
)
def test_retries_on_transient_statuses_only(statuses: list[int], final: int, sleeps: list[float]) -> None:
    answers = iter(statuses)

    def handle(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        return httpx.Response(status, headers={"Retry-After": "7"} if status == 429 else {})

    s, _, slept = session(handle)
    assert s.request("GET", "/v2/").status_code == final
    assert slept == sleeps


def test_persistent_5xx_and_network_errors_give_up_with_a_clear_error() -> None:
    def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"errors": [{"code": "UNAVAILABLE", "message": "maintenance"}]})

    s, rec, slept = session(unavailable, retry=RetryPolicy(attempts=3, base_s=0.1, cap_s=1.0))
    with pytest.raises(RegistryUnavailableError, match="HTTP 503 UNAVAILABLE: maintenance"):
        s.request("GET", "/v2/")
    assert (len(rec.requests), slept) == (3, [0.1, 0.2])

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    s, rec, slept = session(refused, retry=RetryPolicy(attempts=2, base_s=0.1, cap_s=1.0))
    with pytest.raises(RegistryUnavailableError, match="Connection refused"):
        s.request("GET", "/v2/")
    assert (len(rec.requests), slept) == (2, [0.1])


def test_answers_no_retry_mends_are_protocol_errors_at_once() -> None:
    """A registry review: a redirect loop or a body whose encoding lies escaped as raw httpx errors
    (a traceback; under `serve --spec`, every model's reconcile round failed with it)."""

    def loop(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"Location": str(request.url)})

    s, _, slept = session(loop)
    with pytest.raises(RegistryProtocolError, match=r"registry reg\.example: it redirects in a loop"):
        s.request("GET", "/v2/library/m/manifests/latest")
    assert slept == [], "not retried"

    def lying(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all")

    s, _, slept = session(lying)
    with pytest.raises(RegistryProtocolError, match="does not decode"):
        s.request("GET", "/v2/library/m/manifests/latest")
    assert slept == []


def test_a_token_service_that_cannot_be_reached_is_named() -> None:
    """A registry review: its connection error read as the registry's ("is the registry running?")."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="reg"'})

    s, _, _ = session(handle, retry=RetryPolicy(attempts=1, base_s=0.1, cap_s=1.0))
    with pytest.raises(
        RegistryUnavailableError, match=r"its token service https://auth\.example cannot be reached"
    ):
        s.request("GET", "/v2/")


def test_a_token_service_that_drops_one_connection_is_asked_again() -> None:
    """A diff review: naming the token service made its network errors final at the first one."""
    drops = [httpx.ReadError("connection reset by peer")]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            if drops:
                raise drops.pop()
            return httpx.Response(200, json={"token": "t"})
        if request.headers.get("Authorization") == "Bearer t":
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="reg"'})

    s, _, slept = session(handle, retry=RetryPolicy(attempts=3, base_s=0.1, cap_s=1.0))
    assert s.request("GET", "/v2/").status_code == 200 and slept == [0.1]


def test_a_streamed_body_is_produced_again_for_a_retry() -> None:
    bodies: list[bytes] = []
    answers = iter([503, 201])

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(next(answers))

    class Body:
        length = 6

        def __iter__(self):  # type: ignore[no-untyped-def]
            yield b"abc"
            yield b"def"

    s, rec, _ = session(handle)
    assert s.request("PUT", "/v2/x", content=Body()).status_code == 201
    assert bodies == [b"abcdef", b"abcdef"]
    assert rec.requests[-1].headers["Content-Length"] == "6"


# --- docker config.json and credential helpers ---------------------------------------------------


def test_login_storage_is_docker_compatible(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(
        json.dumps({"auths": {"other:5000": {"auth": "eDp5"}}, "psFormat": "x"})
    )
    config = DockerConfig(config_dir)
    assert config.save("reg:5000", USER) == str(config_dir / "config.json")
    raw = json.loads((config_dir / "config.json").read_text())
    assert raw["auths"]["reg:5000"] == {"auth": BASIC.split()[1]}
    assert raw["auths"]["other:5000"] == {"auth": "eDp5"} and raw["psFormat"] == "x"  # the rest is kept
    assert stat.S_IMODE((config_dir / "config.json").stat().st_mode) == 0o600
    assert config.lookup("reg:5000") == USER
    assert config.lookup("elsewhere:5000") is None
    assert list(config_dir.iterdir()) == [config_dir / "config.json"]  # no temp file left
    assert config.erase("reg:5000") is True
    assert config.lookup("reg:5000") is None
    assert config.erase("reg:5000") is False


def test_login_reaches_a_registry_as_push_and_pull_do(tmp_path: Path) -> None:
    """An audit: login ignored $MODELYARD_PLAIN_HTTP_REGISTRIES (its TLS error told the user to set
    it "for every command"): it tried https while push and pull used http."""
    from modelyard.registry.login import login
    from modelyard.registry.options import RegistryOptions

    urls: list[str] = []

    def registry(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(200)

    options = RegistryOptions(
        tmp_path / "docker",
        tmp_path / "cache",
        plain_http_hosts=frozenset({"10.0.0.5:5000"}),
        transport=httpx.MockTransport(registry),
    )
    login("10.0.0.5:5000", USER, options)
    assert urls == ["http://10.0.0.5:5000/v2/"]
    assert DockerConfig(tmp_path / "docker").lookup("10.0.0.5:5000") == USER


@pytest.mark.parametrize(
    ("written", "host"),
    [
        ("ghcr.io", "ghcr.io"),
        ("https://ghcr.io", "ghcr.io"),
        ("http://127.0.0.1:5000/team", "127.0.0.1:5000"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("LOCALHOST:5000", "localhost:5000"),
        ("https://Registry.Example.com/v1/", "registry.example.com"),
    ],
)
def test_registry_host_of_what_docker_login_takes(written: str, host: str) -> None:
    assert registry_host(written) == host


def test_credentials_saved_for_a_host_in_other_letter_case_are_found(tmp_path: Path) -> None:
    """A registry review: `login LOCALHOST:43069` saved them under that key; references name the
    host in lower case, and no push found them. Entries that docker saved so are found too."""
    DockerConfig(tmp_path).save("LOCALHOST:5000", USER)
    assert list(json.loads((tmp_path / "config.json").read_text())["auths"]) == ["localhost:5000"]
    assert DockerConfig(tmp_path).lookup("localhost:5000") == USER
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"Registry.Example.com": {"auth": "YTpi"}}}))
    assert DockerConfig(tmp_path).lookup("registry.example.com") == Credentials("a", "b")


def test_identitytoken_entries_are_read(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"reg:5000": {"identitytoken": "rt-1"}}}))
    assert DockerConfig(tmp_path).lookup("reg:5000") == Credentials(identity_token="rt-1")


@pytest.fixture
def fake_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`docker-credential-fake`: a credential helper (the docker protocol) keeping a JSON file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    store = tmp_path / "helper-store.json"
    helper = bin_dir / "docker-credential-fake"
    helper.write_text(
        f"""#!/usr/bin/env python3
import json, pathlib, sys
store = pathlib.Path({str(store)!r})
data = json.loads(store.read_text()) if store.exists() else {{}}
verb, given = sys.argv[1], sys.stdin.read().strip()
if verb == "store":
    entry = json.loads(given); data[entry["ServerURL"]] = [entry["Username"], entry["Secret"]]
elif verb == "get":
    if given not in data:
        print("credentials not found in native keychain"); sys.exit(1)
    print(json.dumps({{"ServerURL": given, "Username": data[given][0], "Secret": data[given][1]}}))
elif verb == "erase":
    if data.pop(given, None) is None:
        print("credentials not found in native keychain"); sys.exit(1)
store.write_text(json.dumps(data))
"""
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return store


@pytest.mark.parametrize(
    "key", [pytest.param("credsStore", id="credsStore"), pytest.param("credHelpers", id="credHelpers")]
)
def test_credential_helpers(tmp_path: Path, fake_helper: Path, key: str) -> None:
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    setting = "fake" if key == "credsStore" else {"reg:5000": "fake"}
    (config_dir / "config.json").write_text(json.dumps({key: setting}))
    config = DockerConfig(config_dir)
    assert config.save("reg:5000", USER) == "docker-credential-fake"
    raw = json.loads((config_dir / "config.json").read_text())
    assert raw["auths"] == {"reg:5000": {}}  # as docker leaves it: the secret is in the helper
    assert PASSWORD not in (config_dir / "config.json").read_text()
    assert json.loads(fake_helper.read_text()) == {"reg:5000": ["alice", PASSWORD]}
    assert config.lookup("reg:5000") == USER
    assert config.erase("reg:5000") is True
    assert json.loads(fake_helper.read_text()) == {}
    assert config.lookup("reg:5000") is None


def test_a_missing_credential_helper_is_a_clear_error(tmp_path: Path) -> None:
    """Not "authentication failed, log in": the registry refused nothing, and `login` is where
    storing fails."""
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "does-not-exist"}))
    config = DockerConfig(tmp_path)
    for action, call in [
        ("read", lambda: config.lookup("reg:5000")),
        ("store", lambda: config.save("reg:5000", Credentials(username="alice", password=PASSWORD))),
        ("erase", lambda: config.erase("reg:5000")),
    ]:
        with pytest.raises(CredentialHelperError) as caught:
            call()
        message = str(caught.value)
        assert f"reg:5000: could not {action} credentials" in message
        assert "docker-credential-does-not-exist is not installed" in message
        assert "login" not in message and PASSWORD not in message


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({"DOCKER_CONFIG": "/etc/dc", "HOME": "/home/u"}, Path("/etc/dc"), id="DOCKER_CONFIG"),
        pytest.param({"HOME": "/home/u"}, Path("/home/u/.docker"), id="home"),
    ],
)
def test_settings_find_the_docker_config(environ: dict[str, str], expected: Path) -> None:
    assert Settings.from_env(environ).docker_config == expected


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("auths", "expected"),
    [
        pytest.param({"reg:5000": {"auth": _b64(f"alice:{PASSWORD}")}}, USER, id="auth"),
        pytest.param({"http://reg:5000/v1/": {"auth": _b64(f"alice:{PASSWORD}")}}, USER, id="legacy-key"),
        pytest.param({"reg:5000": {"identitytoken": "rt-1"}}, Credentials(identity_token="rt-1"), id="token"),
        pytest.param({"reg:5000": {}}, None, id="empty-entry"),
        pytest.param(
            {"other:1": {"auth": "!!"}, "reg:5000": {"auth": _b64(f"alice:{PASSWORD}")}},
            USER,
            id="a-broken-entry-of-another-host-is-not-read",
        ),
    ],
)
def test_auths_entries_are_read(
    tmp_path: Path, auths: dict[str, object], expected: Credentials | None
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"auths": auths}))
    assert DockerConfig(tmp_path).lookup("reg:5000") == expected


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        pytest.param({"auth": "!!not base64"}, "auth is not base64 of user:password", id="not-base64"),
        pytest.param({"auth": _b64("alice")}, "auth is not base64 of user:password", id="no-colon"),
        pytest.param(
            {"auth": base64.b64encode(b"\xff:x").decode()},
            "auth is not base64 of user:password",
            id="not-utf8",
        ),
        pytest.param({"auth": 12}, "auth is not a string", id="auth-a-number"),
        pytest.param({"identitytoken": ["x"]}, "identitytoken is not a string", id="token-a-list"),
        pytest.param(["alice"], "not a JSON object", id="entry-a-list"),
    ],
)
def test_an_unreadable_auths_entry_says_what_is_wrong(tmp_path: Path, entry: object, reason: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"reg:5000": entry}}))
    with pytest.raises(
        RegistryAuthError, match=f"the entry for reg:5000 in .*config.json cannot be read: {reason}"
    ):
        DockerConfig(tmp_path).lookup("reg:5000")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param('{"Username": "alice"}', "answered without a Username and Secret", id="no-secret"),
        pytest.param(
            '{"Username": "alice", "Secret": 7}', "answered without a Username and Secret", id="number"
        ),
        pytest.param('["alice", "x"]', "answered without a Username and Secret", id="a-list"),
        pytest.param("alice:x", "did not answer with JSON", id="not-json"),
    ],
)
def test_a_credential_helper_answer_without_its_fields_is_an_auth_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str, reason: str
) -> None:
    helper = tmp_path / "docker-credential-odd"
    helper.write_text(f"#!/bin/sh\nprintf '%s' '{answer}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "odd"}))
    with pytest.raises(RegistryAuthError, match=f"docker-credential-odd {reason}"):
        DockerConfig(tmp_path).lookup("reg:5000")
