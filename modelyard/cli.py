"""`modelyard …`: the command line.

This is an edge: it turns argv and the environment into Settings, calls the subsystems, renders
their results, and maps their errors to messages and exit codes (0 ok, 1 user error, 2 other) in
one table, `_ERROR_EXIT_CODES`. Heavy modules (numpy, llama.cpp, rich) are imported inside the
commands that need them, so `modelyard list` and a cached rebuild start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from modelyard import __version__
from modelyard.errors import (
    PRUNE_HINT,
    BlobNotFoundError,
    BuildError,
    CorruptStoreError,
    ImageInUseError,
    ImageNotFoundError,
    InvalidReferenceError,
    ModelyardError,
    RegistryError,
    RegistryUnavailableError,
    ServerNotAnsweringError,
    StoreError,
)
from modelyard.progress import ProgressEvent, ProgressSink
from modelyard.reference import Reference, parse_reference
from modelyard.settings import Settings
from modelyard.store import ModelParts, Store
from modelyard.store.blobs import LOCK_SUFFIX, UNREADABLE_HINT

if TYPE_CHECKING:
    from modelyard.registry import RegistryOptions

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_OTHER_ERROR = 2
# How long `rm` waits for the server at $MODELYARD_HOST, asked whether its spec serves an image
# and to unload a removed one (rm itself needs no server).
SERVER_CHECK_TIMEOUT_S = 5.0

# Ordered: the first matching class decides. Anything not listed is a bug and keeps its traceback.
_ERROR_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (CorruptStoreError, EXIT_OTHER_ERROR),
    (BlobNotFoundError, EXIT_OTHER_ERROR),  # an image's blob gone: the store is damaged (verify)
    (RegistryUnavailableError, EXIT_OTHER_ERROR),  # the network, not the input: worth a retry
    (ServerNotAnsweringError, EXIT_OTHER_ERROR),  # likewise, as `ps` and `stop` exit for it
    (ModelyardError, EXIT_USER_ERROR),
    (OSError, EXIT_OTHER_ERROR),
)


class CommandContext:
    """What every command gets: settings, the store, and where to write."""

    def __init__(self, settings: Settings, stdout: TextIO, stderr: TextIO) -> None:
        self.settings = settings
        self.stdout = stdout
        self.stderr = stderr
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.settings.store_dir, history_limit=self.settings.history_limit)
        return self._store

    def out(self, text: str = "") -> None:
        print(text, file=self.stdout)

    def err(self, text: str) -> None:
        print(text, file=self.stderr)


# --- progress rendering ----------------------------------------------------------------------


def progress_sink(ctx: CommandContext, quiet: bool) -> tuple[ProgressSink, Callable[[], None]]:
    """A sink that draws rich progress bars on a terminal, plain status lines otherwise."""
    if quiet:
        return (lambda event: None), (lambda: None)
    if not ctx.stderr.isatty():
        return plain_progress(ctx.err), lambda: None

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(file=ctx.stderr),
        transient=False,
    )
    tasks: dict[str, Any] = {}
    progress.start()

    def rich_sink(event: ProgressEvent) -> None:
        if event.total is None:
            progress.console.print(event.status, highlight=False)
            return
        key = event.digest or event.status
        if key not in tasks:
            tasks[key] = progress.add_task(event.status, total=event.total)
        # The description too: a blob's verb may change (`pushing …` → `exists …`).
        progress.update(
            tasks[key], description=event.status, completed=event.completed or 0, total=event.total
        )

    return rich_sink, progress.stop


# --- commands ----------------------------------------------------------------------------------


def cmd_build(args: argparse.Namespace, ctx: CommandContext) -> int:
    from modelyard.builder.build import Builder, created_timestamp

    target = parse_reference(args.tag)
    modelfile = Path(args.file) if args.file else _default_modelfile(Path(args.context or "."))
    context = Path(args.context) if args.context else None
    sink, stop = progress_sink(ctx, args.quiet)
    builder = Builder(
        ctx.store,
        ctx.settings.cache_dir,
        created=created_timestamp(ctx.settings.source_date_epoch),
        fetch=_registry_fetch(ctx, args, sink),
        progress=sink,
    )
    try:
        result = builder.build_file(modelfile, target, context=context, quantize=args.quantize)
    finally:
        stop()
    for warning in result.warnings:
        ctx.err(f"warning: {warning}")
    if not args.quiet:
        layers = f"{_count(result.layers_created, 'new layer')}, {result.layers_reused} reused"
        ctx.err(f"built {target.short()} ({_human_bytes(result.size)}, {layers})")
    ctx.out(result.digest)
    return EXIT_OK


def _registry_fetch(
    ctx: CommandContext, args: argparse.Namespace, sink: ProgressSink
) -> Callable[[Reference], None]:
    """`FROM host/name:tag` that is not in the store: pull it, with the build's registry flags."""

    def fetch(ref: Reference) -> None:
        from modelyard.registry import pull

        pull(ctx.store, ref, _registry_options(ctx, args), sink)

    return fetch


def _default_modelfile(context: Path) -> Path:
    for name in ("Modelfile", "Modelfile.yaml", "Modelfile.yml"):
        if (context / name).is_file():
            return context / name
    raise BuildError(f"no Modelfile in {context}; pass one with -f")


def cmd_list(args: argparse.Namespace, ctx: CommandContext) -> int:
    rows: list[dict[str, Any]] = []
    broken: list[str] = []
    for record in sorted(ctx.store.images(), key=lambda r: r.tagged_at, reverse=True):
        ref = parse_reference(record.name)
        row: dict[str, Any] = {"name": ref.short(), "digest": record.digest, "modified_at": record.tagged_at}
        if not record.is_image_manifest:  # another tool's entry (`skopeo copy --all`): not a model
            rows.append(row | {"size": None, "problem": f"not a model image: {record.media_type}"})
            continue
        try:
            manifest = ctx.store.read_manifest(record.digest)
            missing = [d for d in manifest.blob_digests() if not ctx.store.blobs.exists(d)]
            if missing:  # cheap to see (a stat each); a blob's bytes are verify's to check
                raise BlobNotFoundError(missing[0], ref.short())
        except (BlobNotFoundError, CorruptStoreError) as exc:
            # One damaged image must not hide the others: it is listed, flagged, and named below.
            row |= {"size": None, "problem": str(exc)}
            broken.append(ref.short())
        else:
            row["size"] = record.size + manifest.config.size + sum(layer.size for layer in manifest.layers)
        rows.append(row)
    if args.json:
        ctx.out(json.dumps({"models": rows}, indent=2))
    else:
        _table(
            ctx,
            ["NAME", "ID", "SIZE", "MODIFIED"],
            [
                [
                    r["name"],
                    r["digest"][7:19],
                    _human_bytes(r["size"])
                    if r["size"] is not None
                    else "broken"
                    if r["name"] in broken
                    else "–",
                    _ago(r["modified_at"]),
                ]
                for r in rows
            ],
        )
    if broken:
        ctx.err(f"damaged: {', '.join(broken)}; `modelyard verify` says what is wrong and how to repair it")
    return EXIT_OK


def _show_details(ctx: CommandContext, manifest: Any, parts: Any, config: dict[str, Any]) -> dict[str, Any]:
    """What `show` lists about the weights: from the image's config and annotations, as a build
    records them, else (an image converted from Ollama's or Docker's format) from the GGUF header."""
    from modelyard.builder.compose import ANNOTATION_REQUIRES, is_embedding_gguf
    from modelyard.builder.gguf_info import read_gguf

    output_types = config.get("capabilities", {}).get("outputTypes")
    context = manifest.annotations.get("io.modelyard.gguf.context-length")
    hidden = (config.get("transformerConfig") or {}).get("hiddenSize")
    metadata: dict[str, Any] = {}
    if (output_types is None or context is None or hidden is None) and parts.weights is not None:
        with contextlib.suppress(ModelyardError, OSError):
            metadata = dict(read_gguf(ctx.store.blobs.path(parts.weights.digest)).metadata)
    arch = str(metadata.get("general.architecture", ""))
    if output_types is None and metadata:
        output_types = ["embedding"] if is_embedding_gguf(metadata) else ["text"]
    context = context if context is not None else metadata.get(f"{arch}.context_length")
    hidden = hidden if hidden is not None else metadata.get(f"{arch}.embedding_length")
    return {
        "architecture": config.get("architecture") or arch or None,
        "parameters": config.get("paramSize"),
        "quantization": config.get("quantization"),
        "context length": int(context) if context is not None else None,
        "embedding length": hidden,
        "capabilities": ", ".join(sorted({*(output_types or [])})),
        "requires": manifest.annotations.get(ANNOTATION_REQUIRES),  # the Ollama version it asks for
    }


def cmd_show(args: argparse.Namespace, ctx: CommandContext) -> int:
    ref = parse_reference(args.name)
    record = ctx.store.resolve(ref)
    with ctx.store.reading(ref.short()):
        manifest = ctx.store.read_manifest(record.digest)
        parts = ctx.store.read_parts(manifest)
    if args.modelfile:
        ctx.out(_modelfile_for_show(ref, parts, manifest.annotations))
        return EXIT_OK
    if args.template:
        ctx.out(parts.template or "")
        return EXIT_OK
    if args.system:
        ctx.out(parts.system or "")
        return EXIT_OK
    if args.license:
        ctx.out("\n\n".join(parts.licenses))
        return EXIT_OK
    if args.parameters:
        ctx.out(_format_parameters(parts.params))
        return EXIT_OK
    with ctx.store.reading(ref.short()):
        config = ctx.store.read_config(manifest).get("config", {})
    details = _show_details(ctx, manifest, parts, config)
    if args.json:
        ctx.out(
            json.dumps(
                {
                    "name": ref.short(),
                    "digest": record.digest,
                    "details": details,
                    "parameters": parts.params,
                    "template": parts.template,
                    "system": parts.system,
                    "messages": parts.messages,
                    "license": list(parts.licenses),
                    "adapters": [a.digest for a in parts.adapters],
                    "modelfile": parts.modelfile,
                },
                indent=2,
            )
        )
        return EXIT_OK
    ctx.out(f"  {ref.short()}  {record.digest}")
    ctx.out("  Model")
    for key, value in details.items():
        if value:
            ctx.out(f"    {key:<18}{value}")
    if parts.params:
        ctx.out("\n  Parameters")
        ctx.out("\n".join("    " + line for line in _format_parameters(parts.params).splitlines()))
    if parts.system:
        ctx.out("\n  System")
        ctx.out("    " + _first_lines(parts.system))
    if parts.template:
        ctx.out("\n  Template")
        ctx.out("    " + _first_lines(parts.template))
    if parts.messages:
        ctx.out("\n  Messages")
        for message in parts.messages:
            ctx.out(f"    {message['role']:<10}{_first_lines(message['content'], 1)}")
    if parts.adapters:
        ctx.out("\n  Adapters")
        for adapter in parts.adapters:
            ctx.out(f"    {adapter.digest[:19]}  {_human_bytes(adapter.size)}")
    if parts.licenses:
        ctx.out("\n  License")
        ctx.out("    " + _first_lines(parts.licenses[0]))
    return EXIT_OK


def _modelfile_for_show(ref: Reference, parts: ModelParts, annotations: Mapping[str, str]) -> str:
    from modelyard.builder.normalized import for_show, image_modelfile

    normalized = image_modelfile(parts, annotations)
    if normalized is None:
        raise StoreError(f"{ref.short()} has no weights layer: there is no Modelfile to show")
    return for_show(ref.short(), normalized)


def _format_parameters(params: dict[str, Any]) -> str:
    lines = []
    for name in sorted(params):
        values = params[name] if isinstance(params[name], list) else [params[name]]
        lines += [f"{name:<20}{json.dumps(v) if isinstance(v, str) else _scalar(v)}" for v in values]
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)


def _first_lines(text: str, n: int = 4) -> str:
    lines = text.strip().splitlines()
    shown = "\n    ".join(lines[:n])
    return shown + ("\n    …" if len(lines) > n else "")


def cmd_rm(args: argparse.Namespace, ctx: CommandContext) -> int:
    refs = [parse_reference(name) for name in args.names]
    if not args.force:
        _refuse_served_images(ctx, refs, dry_run=args.dry_run)
    digests = {}  # of what rm removes, as the index (and so a server's /api/ps) spells it
    with contextlib.suppress(ImageNotFoundError):  # remove() says which is missing
        index = ctx.store.read_index()
        for name in ctx.store.names_to_remove(refs):
            record = index.get(name)
            if record is not None:
                digests[parse_reference(name).short()] = record.digest
    plans = ctx.store.remove(refs, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for ref, plan in zip(refs, plans, strict=True):
        ctx.out(f"{verb} '{ref.short()}' ({len(plan.blobs)} blobs, {_human_bytes(plan.bytes_freed)} freed)")
    if not args.dry_run:
        _unload_removed(ctx, digests)
    return EXIT_OK


def _refuse_served_images(ctx: CommandContext, refs: list[Reference], *, dry_run: bool = False) -> None:
    """As the server's `DELETE /api/delete` answers 409 (and `docker rmi` refuses the image of a
    running container): removed, an image the spec of the server at $MODELYARD_HOST serves left
    its model answering 404 to every request while its status said Ready (a CLI review). Only
    images that resolve in this store are checked, as the server checks its own."""
    from modelyard.cli_serving import ApiClient, ApiTimeout, base_url, spec_models
    from modelyard.server.address import BadHostError

    try:
        client = ApiClient(base_url(ctx.settings), ctx.settings.api_key, timeout=SERVER_CHECK_TIMEOUT_S)
    except BadHostError:
        return  # rm itself does not need a server; _unload_removed says why none was asked
    try:
        models = spec_models(client, timeout_raises=True)  # none: no server, or one that cannot say
        images = {
            str(model["name"]): [
                parse_reference(str(used["image"])).with_digest(str(used["digest"]))
                for used in [model, *model.get("adapters", [])]
            ]
            for model in models
            if model.get("digest")
        }
    except ApiTimeout as exc:
        # Said, not refused: rm needs no server (a README review: a busy one was passed over silently).
        which = "this image" if len(refs) == 1 else "these images"
        ctx.err(f"warning: {exc}: not asked whether its spec serves {which}")
        return
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # a status this client cannot read: nothing to refuse for
    finally:
        client.close()
    users = ctx.store.left_without_image(images, refs)
    if users:
        them = "it" if len(users) == 1 else "them"
        refused = ImageInUseError(
            f"the spec of the server at {client.base_url} serves {', '.join(users)} from "
            f"{'this image' if len(refs) == 1 else 'these images'}: take {them} out of the spec "
            "first (`modelyard apply`), or remove with --force (its requests then fail until the "
            "spec changes)"
        )
        if not dry_run:
            raise refused
        ctx.err(f"note: without --dry-run this is refused: {refused}")


def _unload_removed(ctx: CommandContext, removed: dict[str, str]) -> None:
    """As `ollama rm` does: a server at $MODELYARD_HOST that has a removed image loaded unloads it
    (only at the digest removed: the server may serve another store). No server: nothing to do."""
    from modelyard.cli_serving import ApiClient, ApiError, ServerUnreachableError, base_url
    from modelyard.server.address import BadHostError

    try:
        url = base_url(ctx.settings)
    except BadHostError as exc:  # the images are gone already: say why no server was asked
        ctx.err(f"warning: no server asked to unload them: {exc}")
        return
    client = ApiClient(url, ctx.settings.api_key, timeout=SERVER_CHECK_TIMEOUT_S)
    try:
        # short name -> (the name the server lists, its digest): asked by the server's own name
        loaded = {
            parse_reference(m["name"]).short(): (str(m["name"]), m.get("digest", ""))
            for m in client.get("/api/ps").get("models", [])
        }
    except (ServerUnreachableError, ApiError, ValueError, KeyError, TypeError, AttributeError):
        client.close()
        return  # no server, another one, or one that cannot say: the store is what rm changes
    try:
        for name, digest in removed.items():
            listed, serving = loaded.get(name, ("", ""))
            if not serving or serving != digest.removeprefix("sha256:"):
                continue
            try:
                client.post("/api/generate", {"model": listed, "keep_alive": 0, "stream": False})
            except (ServerUnreachableError, ApiError) as exc:  # ApiTimeout: it drains its requests
                ctx.err(f"warning: the server at {client.base_url} did not unload '{name}' yet: {exc}")
            else:
                ctx.out(f"unloaded '{name}' from the server at {client.base_url}")
    finally:
        client.close()


def cmd_tag(args: argparse.Namespace, ctx: CommandContext) -> int:
    source, target = parse_reference(args.source), parse_reference(args.target)
    if target.digest is not None:
        raise InvalidReferenceError(args.target, "a tag target cannot carry a digest")
    record = ctx.store.resolve(source)
    tagged = ctx.store.tag(target, record.digest)  # spelled as a tag that differs only by case
    ctx.out(f"tagged {parse_reference(tagged.name).short()} -> {record.digest}")
    return EXIT_OK


def cmd_history(args: argparse.Namespace, ctx: CommandContext) -> int:
    ref = parse_reference(args.name)
    records = ctx.store.history(ref)
    current = ctx.store.read_index().get(str(ref))
    if args.json:
        ctx.out(
            json.dumps(
                [{"digest": r.digest, "tagged_at": r.tagged_at, "current": r == current} for r in records],
                indent=2,
            )
        )
        return EXIT_OK
    _table(
        ctx,
        ["DIGEST", "TAGGED", "CURRENT"],
        [[r.digest, r.tagged_at, "current" if r == current else ""] for r in records],
    )
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace, ctx: CommandContext) -> int:
    ref = parse_reference(args.name)
    record = ctx.store.rollback(ref, args.to)
    ctx.out(f"{ref.short()} -> {record.digest}")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, ctx: CommandContext) -> int:
    plan = ctx.store.prune(grace_s=args.grace, dry_run=args.dry_run, history=args.history)
    verb = "would remove" if args.dry_run else "removed"
    for digest in plan.blobs:
        ctx.out(f"{verb} {digest}")
    for partial in plan.partials:
        ctx.out(f"{verb} {partial}")
    ctx.err(
        f"{verb} {len(plan.blobs)} blobs and {len(plan.partials)} partial files, "
        f"{_human_bytes(plan.bytes_freed)}"
    )
    if not args.history:
        # Rebuilding a name keeps its earlier images for rollback: said, since they take room.
        held = set(ctx.store.plan_prune(args.grace, history=True).blobs) - set(plan.blobs)
        if held:
            size = sum(ctx.store.blobs.size(d) for d in held if ctx.store.blobs.exists(d))
            ctx.err(
                f"note: {_count(len(held), 'blob')} ({_human_bytes(size)}) are kept only for the earlier "
                "images of names (`modelyard history NAME`); `prune --history` forgets those and removes them"
            )
    return EXIT_OK


def _note_partials(ctx: CommandContext) -> None:
    """Files that interrupted builds and pulls left, not blobs yet: said, since they take room."""
    sizes = []
    for path in [*ctx.store.blobs.stale_partials(older_than_s=0), *ctx.store.index_leftovers()]:
        if path.name.endswith(LOCK_SUFFIX):
            continue  # a failed pull's empty lock file: prune removes it, but it is no partial file
        with contextlib.suppress(FileNotFoundError):  # a build or pull may end meanwhile
            sizes.append(path.stat().st_size)
    if sizes:
        ctx.err(
            f"note: {_count(len(sizes), 'partial file')} ({_human_bytes(sum(sizes))}) left by "
            "interrupted builds or pulls (a pull resumes from its own); `modelyard prune` removes "
            "those untouched for an hour, `prune --grace 0` all of them"
        )


def cmd_verify(args: argparse.Namespace, ctx: CommandContext) -> int:
    report = ctx.store.verify(remove_corrupt=args.fix)
    for blob in report.corrupt:
        users = ", ".join(parse_reference(name).short() for name in blob.needed_by) or "no image"
        ctx.out(f"corrupt blob {blob.digest}: its bytes hash to {blob.actual} (needed by {users})")
    for name, digest in report.missing:
        ctx.out(f"missing blob {digest} (needed by {parse_reference(name).short()})")
    for name, reason in report.unreadable:
        ctx.out(f"unreadable image {parse_reference(name).short()}: {reason}")
    for digest, reason in report.unreadable_blobs:
        ctx.out(f"unreadable blob {ctx.store.blobs.path(digest)}: {reason}. {UNREADABLE_HINT}")
    if report.index_problem:
        ctx.out(f"unreadable index: {report.index_problem}")
    _note_partials(ctx)
    if report.ok:
        ctx.err(f"ok: {report.blobs_checked} blobs verified")
        return EXIT_OK
    problems = (
        len(report.corrupt)
        + len(report.missing)
        + len(report.unreadable)
        + len(report.unreadable_blobs)
        + bool(report.index_problem)
    )
    names = {n for b in report.corrupt for n in b.needed_by} | {
        n for n, _ in (*report.missing, *report.unreadable)
    }
    affected = sorted(parse_reference(n).short() for n in names - report.earlier_images)
    earlier = sorted(parse_reference(n).short() for n in names & report.earlier_images)
    parts = [f"build or pull again: {', '.join(affected)}"] if affected else []
    if earlier:  # rollback's images: a pull brings a tag's current image, never these again
        parts.append(f"forget earlier images of a tag with `modelyard prune --history`: {', '.join(earlier)}")
    again = "; ".join(parts) or "no image needs them"
    if report.index_problem:
        advice = "Repair or restore index.json first (see above); nothing was deleted."
    elif report.unreadable_blobs:
        # Its file is there: a build or pull would take it as stored (a diff review).
        then = f", then {again}" if parts else ""
        advice = f"Make the unreadable files above readable, or remove them{then}."
    elif report.removed:
        advice = f"Deleted {_count(len(report.corrupt), 'corrupt blob')}; {again}."
    elif report.corrupt:
        advice = (
            "Run `modelyard verify --fix` to delete the corrupt blobs (a build or pull would take them "
            f"as present); {again}."
        )
    else:
        advice = f"{again[0].upper()}{again[1:]}."
    ctx.err(f"{_count(problems, 'problem')} in {_count(report.blobs_checked, 'blob')}. {advice}")
    return EXIT_OTHER_ERROR


def cmd_pull(args: argparse.Namespace, ctx: CommandContext) -> int:
    from modelyard.registry import pull

    ref = parse_reference(args.name)
    sink, stop = progress_sink(ctx, args.quiet)
    try:
        with _verbose(ctx, args.verbose):
            result = pull(ctx.store, ref, _registry_options(ctx, args), sink)
    finally:
        stop()
    if not args.quiet and result.source_format != "modelpack":
        ctx.err(f"converted from the {result.source_format} format (registry digest {result.remote_digest})")
    ctx.out(result.digest)
    return EXIT_OK


def cmd_push(args: argparse.Namespace, ctx: CommandContext) -> int:
    from modelyard.registry import PushFormat, push
    from modelyard.registry.transfer import Uploaded

    source = parse_reference(args.name)
    target = parse_reference(args.destination) if args.destination else source
    sink, stop = progress_sink(ctx, args.quiet)
    try:
        with _verbose(ctx, args.verbose):
            result = push(
                ctx.store,
                target,
                _registry_options(ctx, args),
                source=source,
                format=PushFormat(args.format),
                progress=sink,
            )
    finally:
        stop()
    if not args.quiet:
        ctx.err(
            f"pushed {_human_bytes(result.bytes_uploaded)} in {result.count(Uploaded.SENT)} blobs "
            f"({result.count(Uploaded.PRESENT)} already there, {result.count(Uploaded.MOUNTED)} mounted)"
        )
    for manifest in result.manifests:
        ctx.out(f"{manifest.reference} {manifest.digest}")
    return EXIT_OK


def cmd_login(args: argparse.Namespace, ctx: CommandContext) -> int:
    from modelyard.registry import Credentials, login

    username = args.username or _prompt("Username: ", secret=False)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = _prompt("Password: ", secret=True)
    if not username or not password:
        raise RegistryError("a user name and a password are needed (use -u USER and --password-stdin)")
    with _verbose(ctx, args.verbose):
        where = login(args.host, Credentials(username, password), _registry_options(ctx, args))
    ctx.err(f"Login succeeded; credentials stored in {where}")
    return EXIT_OK


def cmd_logout(args: argparse.Namespace, ctx: CommandContext) -> int:
    from modelyard.registry import logout

    if logout(args.host, _registry_options(ctx, args)):
        ctx.err(f"Removing login credentials for {args.host}")
    else:
        ctx.err(f"Not logged in to {args.host}")
    return EXIT_OK


def _registry_options(ctx: CommandContext, args: argparse.Namespace) -> RegistryOptions:
    from modelyard.registry import RegistryOptions

    return RegistryOptions.from_settings(
        ctx.settings,
        plain_http=getattr(args, "plain_http", False),
        insecure=getattr(args, "insecure", False),
    )


def _prompt(text: str, *, secret: bool) -> str:
    if not sys.stdin.isatty():
        raise RegistryError("no terminal to ask on; use -u USER and --password-stdin")
    if secret:
        import getpass

        return getpass.getpass(text)
    return input(text).strip()


@contextlib.contextmanager
def _verbose(ctx: CommandContext, enabled: bool) -> Iterator[None]:
    """With --verbose, modelyard's debug log (requests by method and path, never headers) to stderr."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("modelyard")
    handler = logging.StreamHandler(ctx.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# --- helpers ------------------------------------------------------------------------------------


def _table(ctx: CommandContext, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        ctx.out("    ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


PLAIN_PROGRESS_QUIET_BELOW = 16 * 1000**2  # bytes: a transfer this small says only its end


def plain_progress(say: Callable[[str], None]) -> ProgressSink:
    """Status lines for a log (CI, a pipe): each status once, and for a transfer or copy its start,
    each quarter and its end (only its end when it is small), so that a multi-gigabyte pull is not
    minutes of silence (a registry review) nor a line per chunk."""
    last: list[str] = []
    quarters: dict[str, int] = {}  # per blob (or status): the last quarter said

    def plain(event: ProgressEvent) -> None:
        if event.completed is None or not event.total:
            if not last or last[-1] != event.status:
                last.append(event.status)
                say(event.status)
            return
        key = event.digest or event.status
        quarter = min(event.completed * 4 // event.total, 4)
        if quarter < 4 and event.total < PLAIN_PROGRESS_QUIET_BELOW:
            return
        if quarters.get(key, -1) < quarter:
            quarters[key] = quarter
            say(f"{event.status}: {_human_bytes(event.completed)} of {_human_bytes(event.total)}")

    return plain


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _size_cell(row: dict[str, Any], broken: list[str]) -> str:
    if row["size"] is not None:
        return _human_bytes(row["size"])
    return "broken" if row["name"] in broken else "–"  # "–": another tool's entry, not a model


def _ago(timestamp: str) -> str:
    try:
        then = datetime.fromisoformat(timestamp).timestamp()  # "…Z": UTC, whatever the local zone
    except ValueError:
        return timestamp
    seconds = max(time.time() - then, 0)
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = int(seconds // length)
            return f"{_count(count, unit)} ago"  # count >= 1
    return "just now"


def _duration(text: str) -> float:
    """Seconds from `90`, `30s`, `15m`, `1h`, `2d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):  # a CLI review: `--grace -5` was taken
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use e.g. 30s, 15m, 1h, 0")
    return seconds


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelyard",
        description="Docker for local LLMs: build Modelfiles into OCI images, keep them in a local store, "
        "push and pull them through any OCI registry, and serve them.",
        epilog="Environment: MODELYARD_HOME (store and caches; default $XDG_DATA_HOME/modelyard, else "
        "~/.local/share/modelyard), SOURCE_DATE_EPOCH (timestamp stamped into built images), "
        "MODELYARD_HOST and MODELYARD_API_KEY (the server that serve, run, ps, stop, apply and status "
        "use), MODELYARD_DEFAULT_REGISTRY (where pull looks for a name without a registry), "
        "MODELYARD_PLAIN_HTTP_REGISTRIES and MODELYARD_INSECURE_REGISTRIES; the README lists the rest.",
    )
    parser.add_argument("--version", action="version", version=f"modelyard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name in ("build", "create"):
        p = sub.add_parser(
            name,
            help="build an image from a Modelfile" + (" (alias of build)" if name == "create" else ""),
            description="Build an image from a Modelfile (Ollama syntax, or Modelfile.yaml) into the "
            "local store. Paths in FROM and ADAPTER are relative to the Modelfile's folder. The last line "
            "printed is the image digest.",
        )
        p.add_argument(
            "positional_tag", nargs="?", metavar="NAME", help="image name (as `ollama create NAME`)"
        )
        p.add_argument("-t", "--tag", dest="tag_option", metavar="NAME[:TAG]", help="image name and tag")
        p.add_argument("-f", "--file", metavar="MODELFILE", help="the Modelfile (default: ./Modelfile)")
        p.add_argument(
            "--context",
            metavar="DIR",
            help="folder that relative paths start from (default: the Modelfile's folder)",
        )
        p.add_argument(
            "-q",
            "--quantize",
            metavar="TYPE",
            help="quantize F32/F16/BF16 weights to TYPE (Q4_K_M, Q8_0, … as llama.cpp names them)",
        )
        p.add_argument("--quiet", action="store_true", help="print only the digest")
        p.add_argument("--plain-http", action="store_true", help="pull a remote FROM image over HTTP")
        p.add_argument(
            "--insecure", action="store_true", help="pull a remote FROM image without TLS verification"
        )
        p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "list",
        aliases=["ls"],
        help="list images in the local store",
        description="List the images in the local store ($MODELYARD_HOME/store), newest first: name, "
        "the digest's first 12 hex digits, size (weights and every layer), and when the name last moved. "
        "An image whose files are damaged shows as broken; `modelyard verify` says what is wrong.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "show",
        help="show an image's details, parameters, template, system prompt or Modelfile",
        description="Show an image of the local store: its weights (architecture, parameters, "
        "quantization, context length), parameters, template, system prompt, messages, adapters and "
        "license; or one of them alone.",
    )
    p.add_argument("name", metavar="NAME")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--modelfile", action="store_true", help="print a Modelfile that builds this image again"
    )
    group.add_argument("--parameters", action="store_true", help="print the parameters")
    group.add_argument("--template", action="store_true", help="print the template")
    group.add_argument("--system", action="store_true", help="print the system prompt")
    group.add_argument("--license", action="store_true", help="print the license")
    group.add_argument("--json", action="store_true", help="everything, as JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "rm",
        help="remove images (and the blobs only they used)",
        description="Remove names from the local store, with their history, and delete the blobs no "
        "other image uses. NAME@sha256:DIGEST removes NAME only while it points at that digest. All "
        "the names are checked before anything is removed.",
    )
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.add_argument(
        "--force",
        action="store_true",
        help="remove even an image that the spec of the server at $MODELYARD_HOST serves (refused "
        "otherwise, as the server's DELETE /api/delete refuses it)",
    )
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser(
        "tag",
        aliases=["cp"],
        help="give an image another name",
        description="Point TARGET at the image SOURCE names (no blob is copied). The digest TARGET "
        "pointed at before, if any, joins its history (`modelyard history TARGET`).",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser(
        "history",
        help="the digests a name has pointed at, newest first",
        description="The digests NAME has pointed at, newest first, with when it moved to each: what "
        "`modelyard rollback` can return to.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser(
        "rollback",
        help="point a name back at an earlier digest",
        description="Point NAME back at a digest from its history. Without --to, at the one it pointed "
        "at before the current one, so that a second rollback undoes the first (as `kubectl rollout "
        "undo` does); to go further back, name the digest with --to (see `modelyard history NAME`).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--to",
        metavar="DIGEST",
        help="the digest (or a unique prefix of its hex) to return to; default: the previous one",
    )
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser(
        "prune",
        help="remove blobs no image references, and stale partial files",
        description="Delete the blobs that no name or history entry of the store needs, and partial "
        "downloads left by interrupted pulls, once older than --grace. A name keeps its earlier images "
        "for rollback (up to 20); --history forgets them, so that the blobs only they need go too.",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.add_argument(
        "--grace",
        type=_duration,
        default=3600.0,
        metavar="DURATION",
        help="leave alone what is younger than this (default 1h: a build or pull may be using it)",
    )
    p.add_argument(
        "--history",
        action="store_true",
        help="also forget every name's earlier images (what `history` lists and `rollback` returns "
        "to) and remove the blobs only they need",
    )
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "verify",
        aliases=["fsck"],
        help="re-hash every blob and check every image is complete",
        description="Re-hash every blob of the local store against its name, and check that every "
        "image (names and history) has all the blobs it needs. Exit status 0 when all is well, 2 "
        "otherwise, with what to do.",
    )
    p.add_argument(
        "--fix",
        action="store_true",
        help="delete the blobs whose bytes do not match their digest, so that building or pulling "
        "the images that need them brings them again (their bytes are lost either way)",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "pull",
        help="pull an image from a registry into the local store",
        description="Pull HOST[:PORT]/NAME[:TAG] or …@sha256:DIGEST; a NAME without a registry is "
        "looked for in $MODELYARD_DEFAULT_REGISTRY (Ollama's, registry.ollama.ai, unless set) and "
        "stored under the name as given. Reads ModelPack, Ollama and Docker "
        "Model Runner manifests; the last two are converted to ModelPack over the same blobs. An "
        "interrupted pull resumes where it stopped. The last line printed is the local digest.",
    )
    p.add_argument("name", metavar="NAME")
    _registry_flags(p)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser(
        "push",
        help="push an image from the local store to a registry",
        description="Push the local image NAME to DESTINATION (default: NAME itself, which must then "
        "name a registry). Blobs the registry has are not sent again. Ctrl-C lets the chunk in flight "
        "arrive (a second Ctrl-C stops at once), and the next push of the image goes on from there.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("destination", nargs="?", metavar="DESTINATION", help="HOST[:PORT]/NAME[:TAG]")
    p.add_argument(
        "--format",
        choices=("modelpack", "ollama", "both"),
        default="modelpack",
        help="modelpack (default: read by Docker Model Runner, KitOps, ramalama); ollama (Docker schema2, "
        "for `ollama pull`, under the same tag); both (ModelPack under TAG, Ollama under TAG-ollama)",
    )
    _registry_flags(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser(
        "login",
        help="log in to a registry (credentials kept like `docker login`)",
        description="Check the credentials with the registry, then store them in the docker config "
        "($DOCKER_CONFIG/config.json, default ~/.docker/config.json) or its credential helper.",
    )
    p.add_argument("host", metavar="HOST[:PORT]")
    p.add_argument("-u", "--username", metavar="USER")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _registry_flags(p, progress=False)
    p.set_defaults(func=cmd_login)

    p = sub.add_parser(
        "logout",
        help="forget the credentials stored for a registry",
        description="Remove the credentials for HOST from the docker config or its credential helper.",
    )
    p.add_argument("host", metavar="HOST[:PORT]")
    p.set_defaults(func=cmd_logout)

    from modelyard import cli_serving, cli_spec  # serve, run, ps, stop; apply, diff, status, export

    cli_serving.register(sub)
    cli_spec.register(sub)
    return parser


def _registry_flags(p: argparse.ArgumentParser, *, progress: bool = True) -> None:
    p.add_argument(
        "--plain-http",
        action="store_true",
        help="talk HTTP, not HTTPS (the default for localhost and 127.0.0.0/8 registries, and for those "
        "$MODELYARD_PLAIN_HTTP_REGISTRIES lists)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="HTTPS without certificate verification (also on loopback; for some registries only: "
        "$MODELYARD_INSECURE_REGISTRIES)",
    )
    p.add_argument(
        "--verbose", action="store_true", help="log each registry request (never credentials) to stderr"
    )
    if progress:
        p.add_argument("--quiet", action="store_true", help="no progress; print only the result")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; a command that takes a free-form PROMPT after its NAME (`run`) also takes its
    flags after the prompt's first word (`run NAME --format json "…"`, as `ollama run` does), which
    argparse's subcommands cannot do unless the command re-parses its own arguments intermixed."""
    args, extra = parser.parse_known_args(argv)
    intermixed: argparse.ArgumentParser | None = getattr(args, "intermixed", None)
    if not extra:
        return args
    if intermixed is None:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    command = argv.index(args.command)
    vars(args).update(vars(intermixed.parse_intermixed_args(argv[command + 1 :])))
    return args


def _resolve_build_tag(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.func is not cmd_build:
        return
    tag = args.tag_option or args.positional_tag
    if not tag:
        parser.error("build needs an image name: modelyard build -t NAME[:TAG] [-f Modelfile]")
    if args.tag_option and args.positional_tag and args.tag_option != args.positional_tag:
        parser.error(
            f"build got two names, {args.positional_tag!r} and -t {args.tag_option!r}; give one "
            "(to give an image a second name afterwards: modelyard tag)"
        )
    args.tag = tag


# Commands with work of their own to stop and undo (a quantizer child, partial files).
_STOPPED_LIKE_CTRL_C: frozenset[Callable[..., int]] = frozenset({cmd_build, cmd_pull, cmd_push})


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a cancelled CI job, systemd), raised where Ctrl-C is."""


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the command as Ctrl-C does, so that what cleans up after Ctrl-C runs: a build's
    quantizer child is killed and its partial output removed (it ran to the end, and its whole
    output stayed, when SIGTERM ended the CLI at once), a pull's or push's files are left whole."""
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """The `modelyard` command (and `python -m modelyard`)."""
    sys.exit(main(exit_when_stopped=True))


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    exit_when_stopped: bool = False,
) -> int:
    """Run one command; returns its exit code. `exit_when_stopped`: a build, pull or push stopped by
    Ctrl-C or SIGTERM exits at once, without waiting for its transfer threads (the command line's
    way: a read or write blocked on a stalled link held the exit for its timeout, 60 s and again
    for each retry; a diff review). What they leave, a partial download or an upload session in
    its journal, is what the next run resumes from."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if not words:  # what there is to do, not only argparse's "the following arguments are required"
        parser.print_help(stderr or sys.stderr)
        return EXIT_USER_ERROR
    args = _parse(parser, words)
    _resolve_build_tag(args, parser)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a malformed $MODELYARD_… or $SOURCE_DATE_EPOCH
        print(f"Error: {exc}", file=err)
        return EXIT_USER_ERROR
    ctx = CommandContext(settings, out, err)
    try:
        with _terminated_as_interrupt() if args.func in _STOPPED_LIKE_CTRL_C else contextlib.nullcontext():
            return int(args.func(args, ctx))
    except _Terminated:
        ctx.err("terminated")
        return _stopped(143, exit_when_stopped and args.func in _STOPPED_LIKE_CTRL_C)  # 128 + SIGTERM
    except KeyboardInterrupt:
        ctx.err("interrupted")
        return _stopped(130, exit_when_stopped and args.func in _STOPPED_LIKE_CTRL_C)
    except BrokenPipeError:
        # The reader went away (`modelyard show … | head`): stop quietly, as other CLI tools do;
        # stdout goes to /dev/null so that the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 141  # 128 + SIGPIPE, what a tool killed by the signal would report
    except BaseException as exc:
        for kind, code in _ERROR_EXIT_CODES:
            if isinstance(exc, kind):
                ctx.err(f"Error: {_message(exc)}")
                return code
        raise


def _stopped(code: int, at_once: bool) -> int:
    """`code`, or, `at_once`, the process's exit with it now: the transfer threads still blocked
    in a read or write are not waited for (the interpreter's exit joins them)."""
    if at_once and threading.active_count() > 1:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return code


def _count(n: int, thing: str) -> str:
    """`1 blob`, `2 blobs`."""
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def _message(exc: BaseException) -> str:
    if isinstance(exc, ImageNotFoundError):
        return str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, ModelyardError):
        text = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            text += f"; {PRUNE_HINT}"
        return text
    return str(exc)


if __name__ == "__main__":
    entry()
