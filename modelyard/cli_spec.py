"""The declarative commands: `apply`, `status`, `diff`, `export`.

`apply` and `diff` send the spec to the server at $MODELYARD_HOST (its reconciler validates and
plans it); `apply --dry-run` and `diff` also work with no server, planning against this machine's
store. `status` reads the server's `/api/status`. `export k8s` needs no server.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from modelyard.cli_serving import (
    ApiClient,
    ApiError,
    Context,
    ServerUnreachableError,
    api_error_exit,
    base_url,
    duration_seconds,
)

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_OTHER_ERROR = 2
APPLY_TIMEOUT_S = 120.0
STATUS_TIMEOUT_S = 10.0


def _documents(path: str) -> list[dict[str, str]]:
    from modelyard.spec.schema import read_documents

    return [{"path": d.path, "text": d.text} for d in read_documents(Path(path))]


def _print_result(ctx: Context, result: dict[str, Any], dry_run: bool) -> int:
    if not result.get("accepted"):
        ctx.err("the spec is rejected whole; nothing changed:")
        for issue in result.get("issues", []):
            ctx.err(f"  {issue['text']}")
        return EXIT_USER_ERROR
    plan = result.get("plan") or "nothing to do"
    ctx.out(plan)
    if not dry_run:
        state = "applied" if result.get("changed") else "unchanged"
        ctx.err(f"{state}: generation {result.get('generation')}")
    return EXIT_OK


def cmd_apply(args: argparse.Namespace, ctx: Context) -> int:
    documents = _documents(args.file)
    # Bounded (a README review: a server that never answered held `apply`, --dry-run too, for
    # ever); generous, as the server checks each tag with its registry, RESOLVE_DEADLINE_S each.
    client = ApiClient(base_url(ctx.settings), ctx.settings.api_key, timeout=APPLY_TIMEOUT_S)
    try:
        result = client.post("/api/apply", {"documents": documents, "dry_run": args.dry_run})
    except ServerUnreachableError:
        if not args.dry_run:
            ctx.err(
                f"Error: no server answers at {base_url(ctx.settings)}. Start one with "
                f"`modelyard serve --spec {args.file}` (it keeps the spec applied), or `modelyard serve` and "
                "apply again; `--dry-run` works without a server."
            )
            return EXIT_USER_ERROR
        return _offline_plan(ctx, args.file)
    except ApiError as exc:
        ctx.err(f"Error: {exc}")
        return api_error_exit(exc)
    finally:
        client.close()
    code = _print_result(ctx, result, args.dry_run)
    if code == EXIT_OK and args.wait_ready and not args.dry_run:
        return _wait(ctx, args.timeout)
    return code


def cmd_diff(args: argparse.Namespace, ctx: Context) -> int:
    args.dry_run = True
    args.wait_ready = False
    return cmd_apply(args, ctx)


def _offline_plan(ctx: Context, path: str) -> int:
    from modelyard.spec.daemon import plan_for
    from modelyard.spec.plan import format_plan

    ctx.err("no server answers: planning against this machine's store, with nothing loaded")
    ctx.out(format_plan(plan_for(path, ctx.settings)) or "nothing to do")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    if args.wait_ready:
        return _wait(ctx, args.timeout, print_json=args.json)
    status = _status(ctx)
    if status is None:
        return EXIT_USER_ERROR
    if status is NO_ANSWER:
        return EXIT_OTHER_ERROR
    _show(ctx, status, args.json)
    return EXIT_OK


NO_SERVER_YET: dict[str, Any] = {}  # _status's answer, when asked to be quiet, while none answers
# _status's answer (said on stderr) when the server failed or did not answer in time: exit 2, as
# for `ps` and a registry that does not answer (a README review found `status` exiting 1).
NO_ANSWER: dict[str, Any] = {}


def _status(ctx: Context, *, quiet: bool = False, timeout: float | None = None) -> dict[str, Any] | None:
    """The server's /api/status; None when it cannot be had (said on stderr; NO_ANSWER when the
    server failed or did not answer in time), or NO_SERVER_YET when no server answers and `quiet`."""
    client = ApiClient(base_url(ctx.settings), ctx.settings.api_key, timeout=timeout or STATUS_TIMEOUT_S)
    try:
        return dict(client.get("/api/status"))
    except ServerUnreachableError as exc:
        if quiet:
            return NO_SERVER_YET
        ctx.err(f"Error: no server answers at {exc}; start one with `modelyard serve --spec FILE`")
        return None
    except ApiError as exc:  # a wrong API key, a server that is not ours; or one busy starting
        failed = exc.status == 0 or exc.status >= 500  # no answer in time, a broken one, a 5xx
        if quiet and failed:
            return NO_SERVER_YET
        ctx.err(f"Error: {exc}")
        return NO_ANSWER if failed else None
    finally:
        client.close()


def _show(ctx: Context, status: dict[str, Any], as_json: bool) -> None:
    from modelyard.spec.status import format_status

    if as_json:
        ctx.out(json.dumps(status, indent=2))
        return
    spec = status.get("spec")
    if spec:
        ctx.out(format_status(spec))
        if spec.get("name") is not None:
            return
        ctx.out("loaded models:")  # none in force: what is loaded is the state of things
    else:
        ctx.out("no spec applied; loaded models:")
    for name, model in sorted(status.get("models", {}).items()):
        ctx.out(f"  {name:<30} {model['state']}")


def _wait(ctx: Context, timeout: float, print_json: bool = False) -> int:
    deadline = time.monotonic() + timeout
    while True:
        # A server still starting (`serve --spec … &` just before) is waited for too; any other
        # answer that is no status (a wrong key, a server not ours) ends the wait at once.
        # Each ask within the time left (a README review: --timeout 5s took 21 s of a server that
        # never answered), a second at least: the last one says the server did not answer.
        left = deadline - time.monotonic()
        status = _status(ctx, quiet=left > 0, timeout=min(STATUS_TIMEOUT_S, max(left, 1.0)))
        if status is NO_SERVER_YET:
            time.sleep(1.0)
            continue
        if status is None:
            return EXIT_USER_ERROR
        if status is NO_ANSWER:
            return EXIT_OTHER_ERROR
        spec = status.get("spec")
        if spec is None:  # no spec applied: ready as soon as it answers
            _show(ctx, status, print_json)
            return EXIT_OK
        if spec.get("ready"):
            _show(ctx, status, print_json)
            return EXIT_OK
        if time.monotonic() > deadline:
            _show(ctx, status, print_json)
            waiting = [
                model["name"]
                for model in spec.get("models") or []
                if not any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in model.get("conditions", [])
                )
            ]
            names = f": {', '.join(waiting)} (see the table above)" if waiting else ""
            source = next((c for c in spec.get("conditions") or [] if c.get("type") == "SourceReady"), None)
            if source is not None and source.get("status") != "True":
                names += f"{';' if names else ':'} the source: {source.get('message')}"
            ctx.err(f"not ready after {timeout:.0f} s{names}")
            return EXIT_USER_ERROR
        time.sleep(1.0)


def cmd_export(args: argparse.Namespace, ctx: Context) -> int:
    from modelyard.spec.daemon import export_for
    from modelyard.spec.kubernetes import ExportOptions, check_export_options

    options = ExportOptions(
        namespace=args.namespace,
        server_image=args.server_image,
        docker_config_secret=args.docker_config_secret or "",
        api_key_secret=args.api_key_secret,
        ollama_tag_suffix=args.ollama_tag_suffix,
    )
    check_export_options(options)
    ctx.out(export_for(args.file, ctx.settings, mode=args.mode, options=options))
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser(
        "apply",
        help="put a ModelSet spec in force on the server",
        description="Validate a ModelSet spec (a YAML file, or a folder of them that merge) and hand it "
        "to the server's reconciler, which pulls, loads, swaps and unloads until the machine matches it. "
        "An invalid spec is rejected whole, with every problem listed. --dry-run prints the plan and "
        "changes nothing (also without a server).",
    )
    p.add_argument("-f", "--file", required=True, metavar="FILE|DIR")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--wait-ready", action="store_true", help="wait until every model is Ready")
    p.add_argument(
        "--timeout", type=duration_seconds, default=120.0, metavar="DURATION", help="for --wait-ready"
    )
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser(
        "diff",
        help="what applying a spec would change",
        description="The plan `apply` would carry out for this spec: pulls, loads, swaps, reloads, unloads.",
    )
    p.add_argument("-f", "--file", required=True, metavar="FILE|DIR")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser(
        "status",
        help="the spec's models and their conditions (Ready, Progressing, Degraded)",
        description="Ask the server at $MODELYARD_HOST how its spec stands: the generation in force, a "
        "rejected revision and its problems, each model's conditions, and the latest events. Without a "
        "spec, the loaded models. Exit status 1 when no server answers (or, with --wait-ready, when the "
        "timeout passes first).",
    )
    p.add_argument("--wait-ready", action="store_true", help="wait until every model of the spec is Ready")
    p.add_argument(
        "--timeout",
        type=duration_seconds,
        default=120.0,
        metavar="DURATION",
        help="how long --wait-ready waits (120s)",
    )
    p.add_argument("--json", action="store_true", help="print the server's /api/status answer as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "export",
        help="export a spec to other systems",
        description="Write a ModelSet spec in another system's terms, to standard output.",
    )
    target = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    k8s = target.add_parser(
        "k8s",
        help="Kubernetes manifests: KubeAI Models, and/or Deployments running `modelyard serve --spec`",
        description="Kubernetes manifests for a ModelSet spec, as YAML on standard output: KubeAI "
        "Model resources (KubeAI pulls and serves the images), and/or a Deployment per model running "
        "`modelyard serve --spec` on a ConfigMap holding that model's spec.",
    )
    k8s.add_argument("-f", "--file", required=True, metavar="FILE|DIR", help="the spec (a file or folder)")
    k8s.add_argument(
        "--mode",
        choices=["kubeai", "deployment", "both"],
        default="both",
        help="which manifests to write (default: both)",
    )
    k8s.add_argument(
        "--namespace", default="default", help="the namespace of every resource (default: default)"
    )
    k8s.add_argument(
        "--server-image",
        default="ghcr.io/modelyard/modelyard:latest",
        metavar="IMAGE",
        help="the container image the Deployments run: one with modelyard (and llama-cpp-python built "
        "for the cluster's machines) installed (default: %(default)s, a name this project does not "
        "publish yet: build and push your own)",
    )
    k8s.add_argument(
        "--docker-config-secret",
        metavar="SECRET",
        help="a Secret holding .dockerconfigjson, mounted so that the pods can pull from a private "
        "registry (what `modelyard login` stored here)",
    )
    k8s.add_argument(
        "--api-key-secret",
        metavar="SECRET",
        default="modelyard-api-key",
        help="the Secret (key `key`) whose value the pods require as their API key, since they listen "
        'to the whole cluster (default: %(default)s; "" for none: open to every pod)',
    )
    k8s.add_argument(
        "--ollama-tag-suffix",
        default="-ollama",
        metavar="SUFFIX",
        help="KubeAI pulls the Ollama manifest that `push --format both` writes under TAG-ollama "
        "(the default); give '' for an image pushed with --format ollama. A suffix that starts with "
        "'-' takes an '=': --ollama-tag-suffix=-v2",
    )
    k8s.set_defaults(func=cmd_export)
