"""Every error modelyard raises on purpose, in one tree.

    ModelyardError
    ├── InvalidReferenceError (ValueError)      a name that is not a valid image reference
    ├── StoreError
    │   ├── ImageNotFoundError (LookupError)    no such tag or digest in the local store
    │   ├── BlobNotFoundError (FileNotFoundError)
    │   ├── DigestMismatchError (ValueError)    bytes whose sha256 is not the one promised
    │   └── CorruptStoreError                   index.json or a manifest that cannot be read
    └── BuildError
        ├── ModelfileError (ValueError)         a Modelfile that does not parse or validate
        ├── GGUFError (ValueError)              a file that is not a usable GGUF
        └── QuantizeError

Each class carries the facts a message needs (file, line, column, digest, reference) as attributes,
so the CLI and HTTP edges can format them; the message itself already says what was wrong and,
where there is one, what to do next. Builtin bases let callers that know nothing of modelyard catch
the obvious thing (a missing blob is a FileNotFoundError).

Only these are mapped to user-facing errors at the edges. A KeyError, IndexError or TypeError is a
bug and shows its traceback.
"""

from __future__ import annotations

from pathlib import Path


class ModelyardError(Exception):
    """Root of every error modelyard raises on purpose."""


class InvalidReferenceError(ModelyardError, ValueError):
    def __init__(self, reference: str, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(f"invalid reference {reference!r}: {reason}")


class StoreError(ModelyardError):
    """The local store cannot do what was asked."""


class ImageNotFoundError(StoreError, LookupError):
    def __init__(self, name: str, hint: str = "") -> None:
        self.name = name
        message = f"image {name!r} not found in the local store"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class BlobNotFoundError(StoreError, FileNotFoundError):
    def __init__(self, digest: str, ref: str = "") -> None:
        self.digest = digest
        self.ref = ref
        where = f" (needed by {ref})" if ref else ""
        super().__init__(f"blob {digest} is missing from the store{where}")

    def __str__(self) -> str:  # FileNotFoundError would otherwise print "[Errno None] …"
        return str(self.args[0])


class DigestMismatchError(StoreError, ValueError):
    def __init__(self, expected: str, actual: str, source: str = "") -> None:
        self.expected = expected
        self.actual = actual
        self.source = source
        origin = f" from {source}" if source else ""
        super().__init__(f"digest mismatch{origin}: expected {expected}, got {actual}; nothing was stored")


class CorruptStoreError(StoreError):
    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}. Run `modelyard verify` to check the store.")


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
