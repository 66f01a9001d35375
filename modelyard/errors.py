"""Every error modelyard raises on purpose, in one tree.

    ModelyardError
    ├── InvalidReferenceError (ValueError)      a name that is not a valid image reference
    ├── SpecError (ValueError)                  a ModelSet spec that cannot be used
    │   ├── SpecValidationError                 a document that does not validate: every (path, message)
    │   └── SpecSourceError                     a spec file, folder or git source that cannot be read
    ├── StoreError
    │   ├── ImageNotFoundError (LookupError)    no such tag or digest in the local store
    │   ├── BlobNotFoundError (FileNotFoundError)
    │   ├── DigestMismatchError (ValueError)    bytes whose sha256 is not the one promised
    │   └── CorruptStoreError                   index.json or a manifest that cannot be read
    ├── BuildError
    │   ├── ModelfileError (ValueError)         a Modelfile that does not parse or validate
    │   ├── GGUFError (ValueError)              a file that is not a usable GGUF
    │   ├── TemplateError (ValueError)          a chat template that does not parse or render
    │   └── QuantizeError
    ├── RegistryError                           push, pull and login against an OCI registry
    │   ├── RegistryAuthError (PermissionError) credentials missing or refused (401/403)
    │   ├── RemoteNotFoundError (LookupError)   no such repository, tag or blob (404)
    │   ├── RegistryUnavailableError (ConnectionError)  refused, timed out, or 5xx after retries
    │   ├── RegistryProtocolError               a response that breaks the distribution spec
    │   └── CredentialHelperError               a docker-credential-* helper failed or is missing
    └── RunnerError                             a model runner process and its requests
        ├── ModelLoadError                      the weights could not be loaded (loader's message)
        ├── RunnerCrashedError                  the runner process died; its requests fail at once
        ├── InferenceRequestError (ValueError)  a bad request (options, prompt, schema); others go on
        ├── ServerBusyError                     queue full, or no memory free yet: retry after a while
        └── ModelDoesNotFitError                larger than the memory budget even with nothing else loaded

Each class carries the facts a message needs (file, line, column, digest, reference) as attributes,
so the CLI and HTTP edges can format them; the message itself already says what was wrong and,
where there is one, what to do next. Builtin bases let callers that know nothing of modelyard catch
the obvious thing (a missing blob is a FileNotFoundError).

Only these are mapped to user-facing errors at the edges. A KeyError, IndexError or TypeError is a
bug and shows its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# What frees space in a store: said with every full-disk error (CLI and server alike). --grace 0:
# plain prune keeps what was touched within the hour, which on a disk a pull just filled is all of
# it (a store review: the advice freed 0 B). Prune first: it writes nothing, while rm must write
# the index, which a disk full to the last byte refuses.
PRUNE_HINT = (
    "`modelyard prune --grace 0` removes unused blobs and partial files (an interrupted pull then "
    "starts over), `modelyard rm NAME` an image"
)


class ModelyardError(Exception):
    """Root of every error modelyard raises on purpose."""


class InvalidReferenceError(ModelyardError, ValueError):
    def __init__(self, reference: str, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(f"invalid reference {reference!r}: {reason}")


class SpecError(ModelyardError, ValueError):
    """A ModelSet spec (modelyard/v1) that cannot be used; the last good spec stays in force."""


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: where (`spec.models[1].image`, file and 1-based line, 0 = unknown) and what."""

    path: str
    message: str
    file: str = ""
    line: int = 0

    def __str__(self) -> str:
        where = (
            f"{self.file}:{self.line}: " if self.file and self.line else f"{self.file}: " if self.file else ""
        )
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class SpecValidationError(SpecError):
    """The spec is rejected whole; `issues` lists every problem found, not just the first."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"the spec is invalid ({count} problem{'s' if count != 1 else ''}):\n{lines}")


class SpecSourceError(SpecError):
    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class NotAnAdapterError(SpecError):
    """A spec names, as a model's adapter, an image that holds no LoRA adapter."""

    def __init__(self, model: str, image: str) -> None:
        super().__init__(
            f"{model}: the adapter image {image} holds no LoRA adapter (no ADAPTER layer); name an image "
            "built from a Modelfile with an ADAPTER line"
        )


class StoreError(ModelyardError):
    """The local store cannot do what was asked."""


class ImageNotFoundError(StoreError, LookupError):
    def __init__(self, name: str, hint: str = "") -> None:
        self.name = name
        message = f"image {name!r} not found in the local store"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class ImageInUseError(StoreError):
    """An image the spec of a running server serves: removed, its model would fail every request."""


class BlobNotFoundError(StoreError, FileNotFoundError):
    def __init__(self, digest: str, ref: str = "", hint: str = "") -> None:
        self.digest = digest
        self.ref = ref
        where = f" (needed by {ref})" if ref else ""
        super().__init__(f"blob {digest} is missing from the store{where}{'; ' + hint if hint else ''}")

    def __str__(self) -> str:  # FileNotFoundError would otherwise print "[Errno None] …"
        return str(self.args[0])


class DigestMismatchError(StoreError, ValueError):
    def __init__(self, expected: str, actual: str, source: str = "") -> None:
        self.expected = expected
        self.actual = actual
        self.source = source
        origin = f" from {source}" if source else ""
        super().__init__(
            f"digest mismatch{origin}: expected {expected}, got {actual}; those bytes were not stored"
        )


class CorruptStoreError(StoreError):
    def __init__(
        self, path: Path | str, reason: str, hint: str = "Run `modelyard verify` to check the store."
    ) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}. {hint}")


class BuildError(ModelyardError):
    """A build could not produce an image; the store is left as it was."""


class ModelfileError(BuildError, ValueError):
    """A Modelfile (or its YAML form) that does not parse or does not validate.

    `line` and `column` are 1-based; 0 means the error is about the file as a whole.
    """

    def __init__(self, message: str, *, file: str = "Modelfile", line: int = 0, column: int = 0) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        super().__init__(self.location() + message)

    def location(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}: "
        return f"{self.file}: "


class GGUFError(BuildError, ValueError):
    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class QuantizeError(BuildError):
    pass


class TemplateError(BuildError, ValueError):
    """A TEMPLATE (Go) or chat template (Jinja) that cannot be parsed or rendered, including one
    that tries to leave the sandbox."""


class RegistryError(ModelyardError):
    """A registry operation failed; the local store is unchanged."""


class NoRegistryError(RegistryError, ValueError):
    """A name without a registry given to pull or push: the caller's to fix (HTTP 400, not the
    502 of a registry that failed)."""


class RegistryAuthError(RegistryError, PermissionError):
    def __init__(self, host: str, detail: str = "", hint: str = "") -> None:
        self.host, self.detail = host, detail
        message = f"{host}: authentication failed"
        if detail:
            message += f" ({detail})"
        message += f". {hint or f'Run `modelyard login {host}` with valid credentials.'}"
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


class RemoteNotFoundError(RegistryError, LookupError):
    def __init__(self, ref: str, what: str = "manifest") -> None:
        self.ref = ref
        self.what = what
        super().__init__(f"{ref}: {what} not found in the registry")


class RegistryUnavailableError(RegistryError, ConnectionError):
    def __init__(self, host: str, detail: str) -> None:
        self.host = host
        super().__init__(f"registry {host} is unavailable: {detail}")

    def __str__(self) -> str:
        return str(self.args[0])


class RegistryProtocolError(RegistryError):
    pass


class ServerNotAnsweringError(ModelyardError):
    """The server at $MODELYARD_HOST took longer to answer than the command waits: its load or the
    network, not the input (exit 2, as a registry that does not answer)."""


class CredentialHelperError(RegistryError):
    """The credential helper Docker's config names could not read, store or erase credentials: not
    a refusal by the registry, so not "log in again"."""

    def __init__(self, host: str, helper: str, action: str, detail: str) -> None:
        self.host = host
        self.helper = helper
        super().__init__(f"{host}: could not {action} credentials: credential helper {helper} {detail}")

    def __str__(self) -> str:
        return str(self.args[0])


class RunnerError(ModelyardError):
    """A model runner failed to do what was asked."""


class ModelLoadError(RunnerError):
    def __init__(self, model: str, reason: str) -> None:
        self.model = model
        self.reason = reason
        super().__init__(f"cannot load {model}: {reason}")


class RunnerCrashedError(RunnerError):
    def __init__(self, model: str, detail: str) -> None:
        self.model = model
        super().__init__(f"the runner for {model} stopped unexpectedly: {detail}")


class InferenceRequestError(RunnerError, ValueError):
    """One request is bad (unknown option, wrong type, prompt too long, invalid schema); the runner
    keeps serving the others."""


class PromptTooLongError(InferenceRequestError):
    """A prompt, or an input to embed, longer than the model's context where it may not be cut
    (Ollama's `truncate: false`; always on OpenAI's routes, whose code for it is
    context_length_exceeded)."""


class ServerBusyError(RunnerError):
    """Back-pressure: the request may succeed later (HTTP 503 with Retry-After).

    `reason` says why, for callers that act on it (the reconciler's conditions): "queue" (the
    model's queue is full), "memory" (no memory free while the loaded models are busy or pinned),
    "load-failed" or "crashed" (waiting out the backoff after a failed load or a crash),
    "templates" (every template worker busy), "stopping" (the server is shutting down),
    "abandoned" (a load that every request for it left, which nobody is told of)."""

    def __init__(self, message: str, retry_after: float, reason: str = "queue") -> None:
        self.retry_after = retry_after
        self.reason = reason
        super().__init__(message)


class ModelDoesNotFitError(RunnerError):
    LOAD_HINT = (
        "lower num_ctx or num_parallel, use a smaller quantization, or raise the memory budget "
        "($MODELYARD_RAM_BUDGET)"
    )

    def __init__(
        self,
        model: str,
        need: int,
        budget: int,
        where: str = "RAM",
        *,
        what: str = "",
        hint: str = LOAD_HINT,
    ) -> None:
        """`what`: what needs the memory, where that is more than the model ("<model> with …")."""
        self.model = model
        self.need = need
        self.budget = budget
        super().__init__(
            f"{what or model} needs about {memory_size(need)} of {where} but the budget is "
            f"{memory_size(budget)}; {hint}"
        )


def memory_size(n: int) -> str:
    """GiB with two decimals, or MiB below a GiB: a spec's `ram: 150MiB` is said as it was written,
    not as "0.15 GiB" (a spec review)."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class WorkAbandoned(Exception):
    """Raised in a worker thread at its next progress event once nobody waits for its work (a
    client gone, a pull the spec no longer wants). Not a ModelyardError: nobody is told of it."""
