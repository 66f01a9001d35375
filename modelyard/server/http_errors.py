"""Errors → HTTP, in one ordered table (the first matching class decides).

Ollama's routes answer `{"error": "…"}` with Ollama's status codes; OpenAI's routes answer
`{"error": {"message", "type", "param", "code"}}`. A 503 carries `Retry-After`; a 507
`x-should-retry: false`. Anything not in the table is a bug: it is logged with its traceback and
answered 500 without details.
"""

from __future__ import annotations

import errno
import math
import re

from modelyard.errors import (
    PRUNE_HINT,
    BuildError,
    DigestMismatchError,
    ImageNotFoundError,
    InferenceRequestError,
    InvalidReferenceError,
    ModelDoesNotFitError,
    ModelLoadError,
    ModelyardError,
    NoRegistryError,
    PromptTooLongError,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailableError,
    RemoteNotFoundError,
    RunnerCrashedError,
    ServerBusyError,
)

STATUS_CLIENT_GONE = 499  # nginx's and Ollama's "client closed request"
MODEL_NOT_FOUND = "model_not_found"  # OpenAI's code for it
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # OpenAI's code for a prompt too long


class HTTPError(Exception):
    """An error raised inside a route that already knows its status and message.

    (A plain class, not a frozen dataclass: raising sets `__traceback__` on the instance.)"""

    def __init__(
        self,
        status: int,
        message: str,
        retry_after: float | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,  # OpenAI's error code ("model_not_found"), where it has one
        param: str | None = None,  # OpenAI's `param`: the request field at fault, where one is
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.kind = kind
        self.code = code
        self.param = param

    def __str__(self) -> str:
        return self.message


_TABLE: tuple[tuple[type[Exception], int, str], ...] = (
    (ServerBusyError, 503, "server_busy"),
    (ImageNotFoundError, 404, "invalid_request_error"),  # as OpenAI types it, with code model_not_found
    (RemoteNotFoundError, 404, "not_found_error"),
    (InvalidReferenceError, 400, "invalid_request_error"),
    (InferenceRequestError, 400, "invalid_request_error"),
    (BuildError, 400, "invalid_request_error"),  # Modelfile, GGUF, template, quantize
    (DigestMismatchError, 400, "invalid_request_error"),
    (NoRegistryError, 400, "invalid_request_error"),
    (RegistryAuthError, 401, "authentication_error"),
    (RegistryUnavailableError, 502, "upstream_error"),
    (RegistryError, 502, "upstream_error"),
    (ModelDoesNotFitError, 507, "insufficient_memory"),
    (ModelLoadError, 500, "server_error"),
    (RunnerCrashedError, 500, "server_error"),
    (ModelyardError, 500, "server_error"),
)


# Every class that classify() knows: the app answers these without a traceback.
KNOWN_ERRORS: tuple[type[Exception], ...] = (HTTPError, OSError, *(kind for kind, _, _ in _TABLE))


# Errors of the machine's disk, not bugs: said plainly, with what to do about them.
_DISK_ERRORS = {
    errno.ENOSPC: (507, f"no space is left on the disk; {PRUNE_HINT}"),
    errno.EDQUOT: (507, f"the disk quota is used up; {PRUNE_HINT}"),
    # A file past what its file system takes (FAT32's 4 GiB) or the server's `ulimit -f`.
    errno.EFBIG: (507, "a file is larger than the server's file system or its file size limit allows"),
    errno.EROFS: (500, "the file system is read-only"),
    errno.EACCES: (500, "permission denied"),
    errno.EPERM: (500, "operation not permitted"),
}


# A blob's path in the store, which errors about a blob's contents name (a GGUF that does not
# parse): the client knows the blob by its digest, and where the server keeps it is not its to see.
_BLOB_PATH = re.compile(r"\S*/blobs/sha256/([0-9a-f]{64})")


def classify(exc: BaseException) -> HTTPError | None:
    """The HTTP form of a known error; None for a bug."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        # The path stays in the server's log (error_for): it is not the client's to see.
        status, what = _DISK_ERRORS[exc.errno]
        return HTTPError(status, f"the server cannot use its files: {what}", kind="server_error")
    for kind, status, error_type in _TABLE:
        if isinstance(exc, kind):
            message, code = _BLOB_PATH.sub(r"sha256:\1", str(exc)), None
            if isinstance(exc, ImageNotFoundError):
                message, code = f"model '{exc.name}' not found, try pulling it first", MODEL_NOT_FOUND
            elif isinstance(exc, PromptTooLongError):
                code = CONTEXT_LENGTH_EXCEEDED
            retry = exc.retry_after if isinstance(exc, ServerBusyError) else None
            return HTTPError(status, message, retry, error_type, code)
    return None


def retry_headers(error: HTTPError) -> dict[str, str]:
    """`Retry-After` for a busy server; for a 507, `x-should-retry: false`, which the OpenAI
    clients read: they retry any 5xx twice otherwise (a client review: a model that does not fit
    the memory budget was asked for three times), and the memory or disk a 507 lacks will not be
    there a second later."""
    if error.status == 507:
        return {"x-should-retry": "false"}
    if error.retry_after is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(error.retry_after)))}
