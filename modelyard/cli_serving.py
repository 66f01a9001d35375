"""The commands that talk to a server: `serve`, `run`, `ps`, `stop`.

`run`, `ps` and `stop` talk to the server at $MODELYARD_HOST (default 127.0.0.1:11434) over its
Ollama API; `run` starts a server inside this process, on a free loopback port, when none answers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from modelyard.errors import ModelyardError, ServerNotAnsweringError
from modelyard.settings import Settings

if TYPE_CHECKING:
    import httpx

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_OTHER_ERROR = 2


class Context(Protocol):
    settings: Settings
    stdout: TextIO
    stderr: TextIO

    def out(self, text: str = "") -> None: ...
    def err(self, text: str) -> None: ...


class ServerUnreachableError(Exception):
    pass


ALIVE_TIMEOUT_S = 10.0  # `GET /` is answered by the event loop at once, even while models load


class ApiClient:
    """A small Ollama-API client for the CLI (the server may be ours or Ollama itself)."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float | None = None) -> None:
        import httpx  # only the commands that talk to a server pay for importing it

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def alive(self) -> bool:
        """Whether a server answers here; False when nothing does (the connection refused, or no
        answer that Ollama's API gives). A server that takes longer than ALIVE_TIMEOUT_S to answer
        `GET /` is an error, not a reason to start a second one (a CLI review: a busy remote server
        made `run` load the model in this process instead)."""
        import httpx

        try:
            return self.http.get("/", timeout=ALIVE_TIMEOUT_S).status_code == 200
        except httpx.TimeoutException:
            raise ServerNotAnsweringError(
                f"the server at {self.base_url} did not answer within {ALIVE_TIMEOUT_S:.0f} s; check "
                "$MODELYARD_HOST, or how busy that machine is"
            ) from None
        except httpx.HTTPError:
            return False

    def get(self, path: str) -> Any:
        return self._json(self._send("GET", path))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._json(self._send("POST", path, json=body))

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        import httpx

        try:
            with self.http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response.status_code, self._error_text(response))
                for line in response.iter_lines():
                    if line.strip():
                        value = self._line(line)
                        if "error" in value:
                            raise ApiError(200, str(value["error"]))
                        yield value
        except httpx.ConnectError:
            raise ServerUnreachableError(self.base_url) from None
        except httpx.TimeoutException:
            raise ApiTimeout(self.base_url, self.http.timeout.read) from None
        except httpx.HTTPError as exc:  # the server went away mid-answer, or spoke no HTTP
            raise ApiError(0, self._broken(exc)) from None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ServerUnreachableError(self.base_url) from None
        except httpx.TimeoutException:
            raise ApiTimeout(self.base_url, self.http.timeout.read) from None
        except httpx.HTTPError as exc:
            raise ApiError(0, self._broken(exc)) from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, self._error_text(response))
        return response

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json() if response.content else {}
        except ValueError:
            raise ApiError(response.status_code, self._not_ollama(response.text)) from None

    def _line(self, line: str) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ApiError(200, self._not_ollama(line))
        return value

    def _broken(self, exc: Exception) -> str:
        why = str(exc) or type(exc).__name__
        return f"the connection to {self.base_url} broke off ({why}); is the server still running?"

    def _not_ollama(self, text: str) -> str:
        return f"{self.base_url} answered something that is not Ollama's API: {text[:80]!r}"

    def _error_text(self, response: httpx.Response) -> str:
        """The server's `error`; an answer without one comes from something else at that address."""
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            return str(error.get("message", error))
        if error:
            return str(error)
        request = response.request
        return (
            f"{self.base_url} answered {request.method} {request.url.path} with HTTP {response.status_code}"
            f" ({response.text.strip()[:80]!r}), not as modelyard or Ollama would: is $MODELYARD_HOST"
            " the server's address?"
        )

    def close(self) -> None:
        self.http.close()


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def api_error_exit(exc: ApiError) -> int:
    """A refusal (4xx: the request, the key) is the user's to fix; a server that failed (5xx) or
    did not answer in time is another kind of error, as a damaged store is for the store commands."""
    return EXIT_OTHER_ERROR if exc.status >= 500 or exc.status == 0 else EXIT_USER_ERROR


class ApiTimeout(ApiError):
    """The server took longer to answer than the command waits."""

    def __init__(self, base_url: str, seconds: float | None) -> None:
        super().__init__(0, f"{base_url} did not answer within {seconds or 0:.0f} s")


def base_url(settings: Settings) -> str:
    """The server's URL from $MODELYARD_HOST, its scheme and path kept (a TLS proxy's `https://`:
    a CLI review found it sent, API key and all, as plain HTTP)."""
    from modelyard.server.address import parse_address

    return parse_address(settings.host).url


# --- serve -------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, ctx: Context) -> int:
    from modelyard.server.address import parse_address
    from modelyard.server.serve import run_server

    address = parse_address(args.host or ctx.settings.host, "--host" if args.host else "$MODELYARD_HOST")
    if address.scheme != "http":
        ctx.err(
            f"Error: {address.url}: serve speaks plain HTTP; for https put a TLS proxy in front of it, "
            "and give the proxy's https:// address to the clients"
        )
        return EXIT_USER_ERROR
    host, port = address.host, address.port
    spec = args.spec or ctx.settings.spec  # $MODELYARD_SPEC: kept out of `ps` (a GitOps review)
    given = "--spec" if args.spec else "$MODELYARD_SPEC"
    if spec:
        from pathlib import Path

        from modelyard.errors import SpecSourceError
        from modelyard.spec.sources import parse_git_location, redact

        try:  # here, not in the server's start-up, where it was a traceback and exit 3
            if spec.startswith("git+"):
                parse_git_location(spec)
            elif not Path(spec).expanduser().exists():
                # Redacted: a git URL without its git+ may carry a token (a review).
                raise SpecSourceError(redact(spec), "no such file or folder (a git source starts with git+)")
        except SpecSourceError as exc:
            ctx.err(f"Error: {given} {exc}")
            return EXIT_USER_ERROR
    if host not in ("127.0.0.1", "localhost", "::1") and not ctx.settings.api_key:
        ctx.err(
            f"warning: listening on {host}, beyond this machine, with no API key "
            "(set MODELYARD_API_KEY to require one)"
        )
    if args.spec_poll is not None and not spec:
        ctx.err("Error: --spec-poll is for a spec source (--spec or $MODELYARD_SPEC)")
        return EXIT_USER_ERROR
    run_server(ctx.settings, host, port, spec=spec, spec_poll=args.spec_poll)
    return EXIT_OK


# --- ps, stop ------------------------------------------------------------------------------------------


def cmd_ps(args: argparse.Namespace, ctx: Context) -> int:
    client = ApiClient(base_url(ctx.settings), ctx.settings.api_key, timeout=10)
    try:
        answer = client.get("/api/ps")
        models = answer.get("models", [])
    except ServerUnreachableError as exc:
        ctx.err(f"Error: no server answers at {exc}; start one with `modelyard serve`")
        return EXIT_USER_ERROR
    except ApiError as exc:  # a wrong API key, a server that is not ours
        ctx.err(f"Error: {exc}")
        return api_error_exit(exc)
    finally:
        client.close()
    if args.json:
        ctx.out(json.dumps({"models": models}, indent=2))
        return EXIT_OK
    rows = []
    for m in models:
        slots = f"{m.get('slots_busy', 0)}/{m.get('slots', 0)}" if "slots" in m else ""
        rows.append(
            [
                m["name"],
                m["digest"][:12],
                _shared_or_size(m),
                m.get("processor", ""),
                str(m.get("context_length", "")),
                slots,
                str(m.get("queued", "")),
                _until(m["expires_at"]),
                _human(m.get("runner_rss")),
                _human(m.get("weights_resident")),
                m.get("state", ""),
            ]
        )
    header = [
        "NAME",
        "ID",
        "SIZE",
        "PROCESSOR",
        "CONTEXT",
        "SLOTS",
        "QUEUE",
        "UNTIL",
        "RSS",
        "RESIDENT",
        "STATE",
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        ctx.out("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    system = answer.get("system")  # the server's machine, which may not be this one
    if isinstance(system, dict) and {"available", "total", "swap_used"} <= system.keys():
        ctx.out(
            f"\nmemory available {_human(system['available'])} of {_human(system['total'])} on the "
            f"server's machine; swap in use {_human(system['swap_used'])}"
        )
    return EXIT_OK


def spec_models(client: ApiClient, *, timeout_raises: bool = False) -> list[dict[str, Any]]:
    """The models of the server's spec as /api/status lists them; [] when it has none, or no
    reconciler there can say (or no answer in time, unless `timeout_raises`: ApiTimeout)."""
    try:
        spec = client.get("/api/status").get("spec") or {}
    except ApiTimeout:
        if timeout_raises:
            raise
        return []
    except (ApiError, ServerUnreachableError, AttributeError):
        return []
    models = spec.get("models") if isinstance(spec, dict) else None
    return [m for m in models or [] if isinstance(m, dict)] if isinstance(models, list) else []


def _spec_serves(client: ApiClient, name: str) -> bool:
    """Whether the server's spec (if any) declares `name`, unsuspended."""
    return any(
        _short_name(str(m.get("name"))) == name and m.get("phase") != "Suspended" for m in spec_models(client)
    )


def _short_name(name: str) -> str:
    """A model name as `ps` and `stop` compare them (`tiny` is `tiny:latest`); a spec's served name
    no image reference reads (`llama3:8b:q4`) as itself (a diff review: stop raised on one)."""
    from modelyard.errors import InvalidReferenceError
    from modelyard.reference import parse_reference

    try:
        return parse_reference(name).short()
    except InvalidReferenceError:
        return name


STOP_TIMEOUT_S = 60.0


def cmd_stop(args: argparse.Namespace, ctx: Context) -> int:
    client = ApiClient(base_url(ctx.settings), ctx.settings.api_key, timeout=STOP_TIMEOUT_S)

    def listed() -> set[str]:
        return {_short_name(m["name"]) for m in client.get("/api/ps").get("models", [])}

    healed = False
    try:
        wanted = _short_name(args.name)
        loaded = listed()
        if wanted not in loaded:
            # As `ollama stop`: saying "stopped" would hide a typo or the wrong server.
            ctx.err(f"Error: {args.name} is not loaded (loaded: {', '.join(sorted(loaded)) or 'none'})")
            return EXIT_USER_ERROR
        try:
            client.post("/api/generate", {"model": args.name, "keep_alive": 0, "stream": False})
            # The answer does not wait for the requests the model is serving (as Ollama's).
            stopping = wanted in listed()
        except ApiTimeout:
            # Asked: the server unloads it once the requests it is serving end (unless one asks for
            # it first). Only a timeout once it was asked: one before is an error (a README review:
            # a server that never answered was reported as stopping the model, exit 0).
            stopping = True
        if stopping:
            ctx.err(f"{args.name} is stopping: it unloads when the requests it is serving end")
            return EXIT_OK
        healed = _spec_serves(client, wanted)
    except ServerUnreachableError as exc:
        ctx.err(f"Error: no server answers at {exc}; nothing is loaded without one (`modelyard serve`)")
        return EXIT_USER_ERROR
    except ApiError as exc:
        ctx.err(f"Error: {exc}")
        return api_error_exit(exc)
    finally:
        client.close()
    ctx.out(f"stopped {args.name}")
    if healed:
        # A spec review: it loaded again a second later, and nothing said why.
        ctx.err(
            f"note: the server's spec serves {args.name}: it loads again at the next reconcile; take it "
            "out of the spec, or set `suspend: true` on it, to keep it unloaded"
        )
    return EXIT_OK


def _shared_or_size(model: dict[str, Any]) -> str:
    # A name served by another name's runner: its memory is counted on that row.
    if model.get("shares_runner_of"):
        return "shared"
    return _human(model["size"])


def _human(n: Any) -> str:
    if not isinstance(n, int | float):
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}"
        size /= 1000
    return f"{size:.0f} TB"


def _until(expires_at: str) -> str:
    if expires_at.startswith("9999"):
        return "Forever"
    try:
        # UTC ("…Z") from us, the local time with its offset from Ollama: an instant either way.
        moment = datetime.fromisoformat(expires_at).timestamp()
    except ValueError:
        return expires_at
    left = moment - time.time()
    if left <= 0:
        return "Stopping..."
    if left < 120:
        return f"{int(left)} seconds from now"
    return f"{int(left // 60)} minutes from now"


# --- run -------------------------------------------------------------------------------------------------


def _keep_alive(text: str) -> str | float:
    """--keep-alive as the API takes it: a number is seconds (negative: forever), else a duration;
    checked here, before a server starts (a CLI review: `nan` and `1e999` ended in a traceback,
    `foo` in the server's error without the flag's name)."""
    from modelyard.runtime.keepalive import parse_keep_alive

    try:
        seconds = float(text)  # 300, 1e3, .5, +10: seconds, sent as a number
    except ValueError:
        seconds = math.nan
    if math.isfinite(seconds):
        return seconds
    try:
        parse_keep_alive(text, allow_bare_seconds=True)
    except ModelyardError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text  # a duration, or "inf" (JSON has no infinity; the text says it)


MIN_SPEC_POLL_S = 0.1


def duration_seconds(text: str) -> float:
    """A command line's duration (argparse's `type`): seconds, or Go's form (120s, 5m)."""
    from modelyard.runtime.keepalive import parse_go_duration

    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_go_duration(text)
    except Exception:  # a clear message instead of the parser's
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use e.g. 120s, 5m") from None


def _poll_interval(text: str) -> float:
    """--spec-poll: a duration (duration_seconds) of at least a tenth of a second."""
    interval = duration_seconds(text)
    if not interval >= MIN_SPEC_POLL_S or not math.isfinite(interval):
        raise argparse.ArgumentTypeError(f"{text!r}: at least {MIN_SPEC_POLL_S} s, e.g. 10s, 2m")
    return interval


def _prompt_text(text: str) -> str:
    """Words from argv as JSON can carry them: bytes that are not UTF-8 (which Python keeps as lone
    surrogates) become U+FFFD, as Ollama sends them (a CLI review: httpx raised on them)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_stdin() -> str:
    """All of stdin, bytes that are not UTF-8 as U+FFFD (a text stream's strict decoding raised)."""
    buffer = getattr(sys.stdin, "buffer", None)
    return buffer.read().decode("utf-8", "replace") if buffer is not None else sys.stdin.read()


def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    with _server(ctx) as client:
        prompt = " ".join(args.prompt) if args.prompt else None
        if sys.stdin is not None and not sys.stdin.isatty():  # None: closed (`<&-`)
            # As `ollama run`: text on stdin goes before the prompt's words (`cat notes | modelyard
            # run m "summarize this"`; a CLI review: stdin was dropped when words were given).
            piped = _read_stdin()
            prompt = " ".join([piped, *args.prompt] if piped else args.prompt)
        if prompt is not None:
            prompt = _prompt_text(prompt)
        if prompt is not None and not prompt.strip():
            prompt = ""  # nothing to say: only load the model, as `ollama run` does
        options: dict[str, Any] = {}
        body_extra: dict[str, Any] = {}
        if args.format:
            body_extra["format"] = args.format
        if args.keep_alive is not None:  # 0 is a keep_alive too: unload at once
            body_extra["keep_alive"] = args.keep_alive
        try:
            if prompt == "":
                client.post("/api/generate", {"model": args.name, "stream": False, **body_extra})
                return EXIT_OK
            if prompt is not None:
                messages = [{"role": "user", "content": prompt}]
                _chat_turn(client, ctx, args.name, messages, options, body_extra, args.verbose)
                return EXIT_OK
            return _interactive(client, ctx, args.name, options, body_extra, args.verbose)
        except ApiError as exc:
            ctx.err(f"Error: {exc}")
            return api_error_exit(exc)
        except ServerUnreachableError as exc:  # it went away after it answered
            ctx.err(f"Error: no server answers at {exc} any more")
            return EXIT_USER_ERROR


def _chat_turn(
    client: ApiClient,
    ctx: Context,
    model: str,
    messages: list[dict[str, str]],
    options: dict[str, Any],
    extra: dict[str, Any],
    verbose: bool,
) -> str:
    parts: list[str] = []
    final: dict[str, Any] = {}
    for line in client.stream(
        "/api/chat", {"model": model, "messages": messages, "options": options, **extra}
    ):
        text = line.get("message", {}).get("content", "")
        if text:
            parts.append(text)
            ctx.stdout.write(text)
            ctx.stdout.flush()
        if line.get("done"):
            final = line
    ctx.out()
    if verbose and final:
        seconds = final.get("eval_duration", 0) / 1e9
        rate = final.get("eval_count", 0) / seconds if seconds else 0.0
        ctx.err(
            f"total {final.get('total_duration', 0) / 1e9:.2f}s, "
            f"load {final.get('load_duration', 0) / 1e9:.2f}s, "
            f"prompt {final.get('prompt_eval_count', 0)} tokens, {final.get('eval_count', 0)} tokens at "
            f"{rate:.1f} tokens/s"
        )
    return "".join(parts)


CHAT_HELP = """Available commands:
  /set parameter NAME VALUE   set a parameter for the next messages (temperature 0.2, num_ctx 4096, …)
  /set system TEXT            set the system message
  /set verbose, /set quiet    show, or stop showing, each answer's timings and token counts
  /clear                      forget the conversation
  /bye                        exit (also /exit, /quit, Ctrl-D; Ctrl-C stops an answer or clears a line)
  /?, /help                   this help
Use \"\"\" to begin and end a message of several lines."""


@dataclass(frozen=True)
class ChatLine:
    """What one line of the interactive chat asks for (pure: `chat_line`)."""

    kind: str  # say | quit | clear | help | system | parameter | verbose | error | nothing | open (\"\"\")
    text: str = ""
    name: str = ""
    value: Any = None


def chat_line(line: str) -> ChatLine:
    """A line typed at `>>>`, read as `ollama run` reads it."""
    text = line.strip()
    if not text:
        return ChatLine("nothing")
    if text.startswith('"""'):
        rest = text[3:]
        if rest.endswith('"""') and len(rest) >= 3:  # opened and closed on one line
            return ChatLine("say", rest[:-3].strip())
        return ChatLine("open", rest)
    if not text.startswith("/"):
        return ChatLine("say", text)
    words = text.split(maxsplit=3)
    command = words[0]
    if command in ("/bye", "/exit", "/quit"):
        return ChatLine("quit")
    if command == "/clear":
        return ChatLine("clear")
    if command in ("/?", "/help"):
        return ChatLine("help")
    if command == "/set" and len(words) >= 3 and words[1] == "system":
        return ChatLine("system", text.split(maxsplit=2)[2])
    if command == "/set" and len(words) == 4 and words[1] == "parameter":
        return _parameter_line(words[2], words[3])
    if command == "/set" and len(words) == 2 and words[1] in ("verbose", "quiet"):
        return ChatLine("verbose", value=words[1] == "verbose")
    if command == "/set":
        return ChatLine("error", "use /set parameter NAME VALUE, /set system TEXT, or /set verbose|quiet")
    return ChatLine("error", f"unknown command {command!r}; /? lists the commands")


def _parameter_line(name: str, text: str) -> ChatLine:
    """`/set parameter NAME VALUE`, checked as a request's option is (type and range), so that a bad
    one is refused here rather than by every message after it. `stop` takes several words."""
    from modelyard.builder.params import coerce_parameter
    from modelyard.errors import InferenceRequestError, ModelfileError
    from modelyard.runtime.options import parse_request_options

    try:
        value: Any = text.split() if name == "stop" else coerce_parameter(name, text)
        parse_request_options({name: value})
    except (ModelfileError, InferenceRequestError) as exc:
        return ChatLine("error", exc.message if isinstance(exc, ModelfileError) else str(exc))
    return ChatLine("parameter", name=name, value=value)


def _interactive(
    client: ApiClient, ctx: Context, model: str, options: dict[str, Any], extra: dict[str, Any], verbose: bool
) -> int:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()
    client.post("/api/generate", {"model": model, "stream": False, **extra})  # load before the first prompt
    ctx.err("Send a message (/? for help, /bye to quit)")
    history: list[dict[str, str]] = []
    system: list[dict[str, str]] = []
    while True:
        try:
            asked = chat_line(input(">>> "))
        except EOFError:
            ctx.out()
            return EXIT_OK
        except KeyboardInterrupt:  # clears the line and keeps the chat, as `ollama run` does
            ctx.out()
            ctx.err("Use Ctrl-D or /bye to exit.")
            continue
        if asked.kind == "open":  # a message of several lines, up to a closing \"\"\"
            lines = [asked.text] if asked.text else []
            try:
                while not (line := input("... ")).rstrip().endswith('"""'):
                    lines.append(line)
            except EOFError:
                ctx.out()
                return EXIT_OK
            except KeyboardInterrupt:  # drops the message, as Ctrl-C at >>> would not: keeps the chat
                ctx.out()
                continue
            lines.append(line.rstrip()[:-3])
            asked = ChatLine("say", "\n".join(lines).strip())
        if asked.kind == "quit":
            return EXIT_OK
        if asked.kind == "clear":
            history.clear()
            ctx.err("Cleared the conversation.")
        elif asked.kind == "help":
            ctx.err(CHAT_HELP)
        elif asked.kind == "error":
            ctx.err(f"Error: {asked.text}")
        elif asked.kind == "system":
            system[:] = [{"role": "system", "content": asked.text}]
            ctx.err("Set the system message.")
        elif asked.kind == "parameter":
            options[asked.name] = asked.value
            ctx.err(f"Set parameter {asked.name!r} to {asked.value!r}.")
        elif asked.kind == "verbose":
            verbose = asked.value
            ctx.err("Set 'verbose' mode." if verbose else "Set 'quiet' mode.")
        elif asked.kind == "say" and asked.text:
            history.append({"role": "user", "content": asked.text})
            try:
                answer = _chat_turn(client, ctx, model, system + history, options, extra, verbose)
            except KeyboardInterrupt:
                ctx.out()
                history.pop()
                continue
            except (ApiError, ServerUnreachableError) as exc:  # refused, or no server now: go on
                ctx.out()  # after what part of an answer came
                ctx.err(
                    f"Error: {exc}" if isinstance(exc, ApiError) else f"Error: no server answers at {exc}"
                )
                history.pop()
                continue
            history.append({"role": "assistant", "content": answer})


@contextlib.contextmanager
def _server(ctx: Context) -> Iterator[ApiClient]:
    """A client for the running server, or for one started here if none answers."""
    client = ApiClient(base_url(ctx.settings), ctx.settings.api_key)
    if client.alive():
        try:
            yield client
        finally:
            client.close()
        return
    client.close()
    with InProcessServer(ctx.settings) as url:
        inner = ApiClient(url, ctx.settings.api_key)
        try:
            yield inner
        finally:
            inner.close()


class InProcessServer:
    """A server on a free loopback port in a thread of this process, stopped on exit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __enter__(self) -> str:
        import uvicorn

        from modelyard.runtime.runner import Launcher
        from modelyard.server.app import create_app
        from modelyard.server.serve import build_state

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.launcher = Launcher(spares=1)
        app = create_app(build_state(self.settings, launcher=self.launcher), bind_host="127.0.0.1")
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="in-process-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise ServerUnreachableError("the in-process server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.launcher.close()


# --- the parsers -------------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the Ollama and OpenAI APIs",
        description="Serve the Ollama API (/api/…) and the OpenAI API (/v1/…), with /health, /api/status and "
        "/metrics. Listens on $MODELYARD_HOST (default 127.0.0.1:11434). Environment: MODELYARD_API_KEY "
        "(require Bearer auth), MODELYARD_ORIGINS (CORS), MODELYARD_NUM_PARALLEL, MODELYARD_KEEP_ALIVE, "
        "MODELYARD_MAX_QUEUE, MODELYARD_RAM_BUDGET, MODELYARD_MAX_LOADED_MODELS; for the registries --spec "
        "pulls from, MODELYARD_PLAIN_HTTP_REGISTRIES and MODELYARD_INSECURE_REGISTRIES. SIGTERM or "
        "Ctrl-C: no new requests, MODELYARD_SHUTDOWN_GRACE seconds (10) for those in flight; a second "
        "Ctrl-C ends them at once.",
    )
    p.add_argument("--host", metavar="HOST[:PORT]", help="where to listen (default: $MODELYARD_HOST)")
    p.add_argument(
        "--spec",
        metavar="FILE|DIR|git+URL[@REF][#PATH]",
        help="keep the models of this ModelSet spec loaded, following its edits (a file or folder is "
        "watched; a git source is polled for new commits); /health answers 200 once each answers requests. "
        "Default: $MODELYARD_SPEC (where a git URL with a token stays out of the process list)",
    )
    p.add_argument(
        "--spec-poll",
        metavar="DURATION",
        type=_poll_interval,
        help="how often the spec source is read: a git source is asked for a new commit (default 30s), "
        "a file or folder read (default 0.5s)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "run",
        help="chat with a model (one prompt, stdin, or interactively)",
        description="Talk to a model through the server at $MODELYARD_HOST, or through one started in "
        "this process when none answers. With a PROMPT (or text on stdin) answer once; otherwise chat, "
        "keeping the conversation, until /bye.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("prompt", nargs="*", default=[], metavar="PROMPT")  # default: not "required"
    p.add_argument("--format", choices=["json"], help="ask for JSON output")
    p.add_argument(
        "--keep-alive",
        metavar="DURATION",
        type=_keep_alive,
        help="how long the model stays loaded afterwards: a duration (30s, 10m, 1h), seconds (300), "
        "0 to unload at once, or a negative number to keep it loaded",
    )
    p.add_argument("--verbose", action="store_true", help="print timings after each answer")
    p.set_defaults(func=cmd_run, intermixed=p)  # flags may follow the prompt's words (cli._parse)

    p = sub.add_parser(
        "ps",
        help="models loaded by the server, with live memory figures",
        description="List the models loaded by the server at $MODELYARD_HOST: NAME, ID (digest), SIZE (the "
        "memory counted for it: weights, KV cache, its runner process, and an embeddings context once "
        "used), PROCESSOR (its CPU/GPU split), CONTEXT and SLOTS per runner, QUEUE (requests waiting), "
        "UNTIL (when it unloads if left idle), RSS (the runner process's resident memory), RESIDENT (the "
        "part of its mmapped weights in RAM now), and STATE (loading, ready, stopping: taking no new "
        "request until those in flight end, for a stop or another model's memory; failed).",
    )
    p.add_argument("--json", action="store_true", help="print the server's /api/ps answer as JSON")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser(
        "stop",
        help="unload a model from the server",
        description="Unload a model from the server at $MODELYARD_HOST now (its requests in flight finish "
        "first); it loads again on its next request.",
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_stop)
