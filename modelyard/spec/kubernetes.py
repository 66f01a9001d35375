"""The same spec on Kubernetes, with the OCI registry as the shared store (`modelyard export k8s`).

Two shapes (both with `mode="both"`):

- `deployment`: per model, a ConfigMap holding a ModelSet of that one model, a Deployment running
  `modelyard serve --spec` on it (the model is pulled from the registry at start), and a Service.
  Memory requests come from the estimate (weights + KV cache + compute, from the GGUF header) when
  the image is in the local store; the limit adds 25 %, and the limit less the server's overhead
  is the pod's spec.memory.ram and $MODELYARD_RAM_BUDGET. Readiness is `GET /health`, which answers
  200 once the spec's models are Ready.
- `kubeai`: per model, a KubeAI `Model` (kubeai.org/v1) with the Ollama engine, which pulls
  `ollama://HOST/NAME:TAG` (push the image with `--format ollama` for it; `?insecure=true` for a
  registry in $MODELYARD_PLAIN_HTTP_REGISTRIES or $MODELYARD_INSECURE_REGISTRIES). pinned or keepAlive
  forever → minReplicas 1; a finite keepAlive → scale to zero after it (scaleDownDelaySeconds);
  parallel → targetRequests; the estimate → `resourceProfile: cpu:N` (N units of `profile_unit_bytes`).

Pure: the estimates come in as a mapping (`estimate_models` reads them from the store).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import yaml

from modelyard.errors import ModelyardError, SpecError
from modelyard.reference import parse_reference
from modelyard.registry.endpoint import is_loopback
from modelyard.registry.push import OLLAMA_TAG_SUFFIX
from modelyard.runtime.servable import load_servable
from modelyard.settings import Settings
from modelyard.spec.footprint import footprint
from modelyard.spec.schema import MemorySpec, ModelSetBody, ModelSpec, Spec, format_byte_size
from modelyard.store import Store

Mode = Literal["kubeai", "deployment", "both"]
GIB = 1024**3
MIB = 1024**2
# The HTTP server's own process beside the models (each runner's process is in its footprint):
# with it, a pod asks for what it asked before the footprint counted the runner.
SERVER_OVERHEAD = 192 * MIB
LABEL_SET = "modelyard.io/modelset"
LABEL_MODEL = "modelyard.io/model"
ANNOTATION_ESTIMATE = "modelyard.io/memory-estimate"
ANNOTATION_SERVED_NAME = "modelyard.io/served-name"
ANNOTATION_IMAGE = "modelyard.io/image"
KUBEAI_NAME_MAX = 40  # the Model CRD's rule


@dataclass(frozen=True)
class ExportOptions:
    namespace: str = "default"
    server_image: str = "ghcr.io/modelyard/modelyard:latest"  # a container image with modelyard installed
    port: int = 11434
    fallback_bytes: int = 4 * GIB  # memory to request when the image is not in the local store
    kubeai_profile: str = "cpu"  # KubeAI resource profile for CPU models
    kubeai_gpu_profile: str = "nvidia-gpu-l4"  # for models with gpuLayers all or N > 0
    profile_unit_bytes: int = 2 * GIB  # memory one unit of the profile gives
    docker_config_secret: str = ""  # a Secret with `.dockerconfigjson`, for private registries
    # A Secret whose `key` is the API key every request but / and /health must carry: the pods
    # listen beyond loopback, to the whole cluster. "" exports them open (`--api-key-secret ""`).
    api_key_secret: str = "modelyard-api-key"
    # KubeAI's Ollama engine reads Ollama manifests: `push --format both` writes one beside the
    # ModelPack manifest under TAG + this suffix; "" for an image pushed with `--format ollama`.
    ollama_tag_suffix: str = OLLAMA_TAG_SUFFIX
    # Registries reached over plain HTTP, or HTTPS without certificate verification (host[:port]):
    # the Settings where the export runs (with_settings), for the pods and KubeAI to pull as it does.
    plain_http_registries: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()

    def with_settings(self, settings: Settings) -> ExportOptions:
        """These options with what `settings` say of how registries are reached."""
        return replace(
            self,
            plain_http_registries=settings.plain_http_registries,
            insecure_registries=settings.insecure_registries,
        )


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def check_export_options(options: ExportOptions) -> None:
    """Refuse what the API server would: the manifests went out with a namespace, image or Secret
    name it rejects (a spec review: `--namespace My_NS` exited 0)."""
    wrong = []
    if not _DNS_LABEL.fullmatch(options.namespace):
        wrong.append(f"--namespace {options.namespace!r}: lowercase letters, digits and '-', at most 63")
    if not options.server_image or any(c.isspace() for c in options.server_image):
        wrong.append(f"--server-image {options.server_image!r}: an image reference, without spaces")
    for flag, secret in (
        ("--docker-config-secret", options.docker_config_secret),
        ("--api-key-secret", options.api_key_secret),
    ):
        if secret and not _DNS_SUBDOMAIN.fullmatch(secret):
            wrong.append(f"{flag} {secret!r}: a Secret name is lowercase letters, digits, '-' and '.'")
    if wrong:
        raise ModelyardError("not a valid Kubernetes export: " + "; ".join(wrong))


def export_kubernetes(
    spec: Spec,
    *,
    mode: Mode = "both",
    estimates: Mapping[str, int] | None = None,
    options: ExportOptions | None = None,
) -> list[dict[str, Any]]:
    """Kubernetes resources for every model the spec does not suspend."""
    options = options or ExportOptions()
    estimates = estimates or {}
    names = _resource_names(spec)
    resources: list[dict[str, Any]] = []
    for model in spec.models:
        if model.suspend:
            continue
        name = names[model.name]
        if mode in ("deployment", "both"):
            resources.extend(_deployment(spec, model, name, estimates.get(model.name), options))
        if mode in ("kubeai", "both"):
            resources.append(_kubeai_model(spec, model, name, estimates.get(model.name), options))
    return resources


def export_caveats(spec: Spec, mode: Mode, options: ExportOptions | None = None) -> list[str]:
    """What the export cannot carry of the spec, or what will not work in a cluster, said rather
    than dropped in silence."""
    options = options or ExportOptions()
    caveats = []
    if mode in ("deployment", "both"):
        if options.api_key_secret:
            caveats.append(
                f"the pods read their API key from Secret {options.api_key_secret!r} (key `key`) and do "
                "not start without it: kubectl create secret generic "
                f"{options.api_key_secret} --from-literal=key=$(openssl rand -hex 32)"
            )
        else:
            caveats.append(
                "the pods answer anyone in the cluster, with no API key (--api-key-secret names a "
                "Secret to require one)"
            )
    if spec.body.memory.total is not None:
        caveats.append(
            "spec.memory is a budget for one machine serving every model; each model's pod gets a "
            "memory limit from that model's estimate instead, and that limit less the server's "
            "overhead as its spec.memory.ram"
        )
    for model in spec.models:
        host = parse_reference(model.image).host or ""
        if not model.suspend and host and is_loopback(host):
            caveats.append(
                f"model {model.name!r}: {host} inside a pod is the pod itself; name a registry the "
                "cluster reaches"
            )
    return caveats + kubeai_caveats(spec, mode)


def kubeai_caveats(spec: Spec, mode: Mode) -> list[str]:
    """What a KubeAI Model cannot carry of the spec, said rather than dropped in silence."""
    if mode not in ("kubeai", "both"):
        return []
    names = _resource_names(spec)
    caveats = []
    for model in spec.models:
        if model.suspend:
            continue
        lost = [what for what, present in (("params", model.params), ("adapters", model.adapters)) if present]
        if lost:
            caveats.append(
                f"model {model.name!r}: KubeAI runs the image as it is; its {' and '.join(lost)} are not "
                "exported (build them into the image, or use --mode deployment)"
            )
        if names[model.name] != model.name:
            caveats.append(
                f"model {model.name!r}: KubeAI serves it as {names[model.name]!r} (a Kubernetes name); "
                "clients must ask for that name"
            )
        ref = parse_reference(model.image)
        if ref.tag and ref.digest:
            # A spec review: the digest went in silence, and the pod followed the tag.
            caveats.append(
                f"model {model.name!r}: KubeAI's Ollama engine pulls by tag; {model.image} is exported as "
                f"its tag {ref.tag!r}, which may point elsewhere by then (or use --mode deployment)"
            )
    return caveats


class _PlainDumper(yaml.SafeDumper):
    """Writes a value used twice (the probes' httpGet) twice, not as `&id001` / `*id001`: plain
    YAML for people and for tools that read manifests without resolving aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def export_yaml(resources: list[dict[str, Any]]) -> str:
    return yaml.dump_all(resources, Dumper=_PlainDumper, sort_keys=False)


def estimate_models(spec: Spec, store: Store) -> dict[str, int]:
    """Bytes each model takes with the spec's options, for the images in the local store."""
    out: dict[str, int] = {}
    for model in spec.models:
        try:
            out[model.name] = footprint(
                load_servable(store, parse_reference(model.image)), model.load_options()
            )
        except ModelyardError:
            continue
    return out


# --- plain Deployments ----------------------------------------------------------------------------


def _deployment(
    spec: Spec, model: ModelSpec, name: str, estimated: int | None, options: ExportOptions
) -> list[dict[str, Any]]:
    full = resource_name(spec.name, name)
    labels = {
        "app.kubernetes.io/name": "modelyard",
        "app.kubernetes.io/instance": full,
        "app.kubernetes.io/managed-by": "modelyard",
        LABEL_SET: spec.name,
        LABEL_MODEL: name,
    }
    need = (estimated or options.fallback_bytes) + SERVER_OVERHEAD
    limit = math.ceil(need * 1.25 / MIB) * MIB
    # The models' budget is the pod's limit less the server's own overhead. Left "auto", it would
    # be MemAvailable from /proc/meminfo, which in a container is the node's, not the limit: a tag
    # that moves would load the new digest beside the old one and the container be OOM-killed.
    # With it, the reconciler sees that both do not fit and unloads the old one first (a short
    # gap); $MODELYARD_RAM_BUDGET tells the scheduler the same for the loads it makes on its own
    # (a request with other load options, a load on demand after keepAlive).
    budget = limit - SERVER_OVERHEAD
    if not parse_reference(model.image).is_remote:
        raise SpecError(
            f"model {model.name!r}: {model.image} is a local image; the pod pulls from a registry, "
            "so push it and name the registry in the spec"
        )
    # The spec's own settings, but the memory budget: this pod's (above), not one machine's for all.
    body = ModelSetBody(
        interval=spec.body.interval,
        memory=MemorySpec(ram=budget),
        prune=spec.body.prune,
        self_heal=spec.body.self_heal,
        models=(model,),
    )
    one = Spec(name=spec.name, body=body, labels=dict(spec.labels))
    annotations = {
        ANNOTATION_SERVED_NAME: model.name,
        ANNOTATION_IMAGE: model.image,
        ANNOTATION_ESTIMATE: _estimate_note(estimated),
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(full, options, labels, annotations),
        "data": {"modelset.yaml": one.to_yaml()},
    }
    env: list[dict[str, Any]] = [
        {"name": "MODELYARD_HOST", "value": f"0.0.0.0:{options.port}"},
        {"name": "MODELYARD_HOME", "value": "/var/lib/modelyard"},
        {"name": "MODELYARD_RAM_BUDGET", "value": format_byte_size(budget)},
    ]
    # Registries the export reaches over plain HTTP (or without verifying certificates), the pod
    # must too: else it tries HTTPS and never pulls.
    for variable, hosts in (
        ("MODELYARD_PLAIN_HTTP_REGISTRIES", options.plain_http_registries),
        ("MODELYARD_INSECURE_REGISTRIES", options.insecure_registries),
    ):
        if hosts:
            env.append({"name": variable, "value": ",".join(hosts)})
    if options.api_key_secret:
        # Not optional: without its Secret the pod does not start, rather than start open.
        reference = {"name": options.api_key_secret, "key": "key"}
        env.append({"name": "MODELYARD_API_KEY", "valueFrom": {"secretKeyRef": reference}})
    mounts = [
        {"name": "spec", "mountPath": "/etc/modelyard", "readOnly": True},
        {"name": "home", "mountPath": "/var/lib/modelyard"},
    ]
    # No sizeLimit on the store: it keeps every digest the tag has pointed to (serve --spec prunes
    # nothing) and the sizes of digests to come are not known here; a limit from today's image
    # would have the kubelet evict the pod after a tag move or two.
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": full}},
        {"name": "home", "emptyDir": {}},
    ]
    if options.docker_config_secret:
        env.append({"name": "DOCKER_CONFIG", "value": "/etc/modelyard-docker"})
        mounts.append({"name": "docker-config", "mountPath": "/etc/modelyard-docker", "readOnly": True})
        volumes.append(
            {
                "name": "docker-config",
                "secret": {
                    "secretName": options.docker_config_secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
    health = {"httpGet": {"path": "/health", "port": "http"}}  # 200 once every model answers requests
    alive = {"httpGet": {"path": "/", "port": "http"}}  # 200 while the process answers at all
    resources: dict[str, Any] = {
        "requests": {"cpu": "1", "memory": _quantity(need)},
        "limits": {"memory": _quantity(limit)},
    }
    # Not runAsNonRoot: the server image is the user's (--server-image; none is published yet) and
    # may run as root, which that setting refuses to start. What needs no particular user:
    capabilities: dict[str, list[str]] = {"drop": ["ALL"]}
    if options.port < 1024:
        capabilities["add"] = ["NET_BIND_SERVICE"]  # a port below 1024 needs it
    security = {
        "allowPrivilegeEscalation": False,
        "capabilities": capabilities,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if _uses_gpu(model):
        resources["limits"]["nvidia.com/gpu"] = "1"
    container = {
        "name": "modelyard",
        "image": options.server_image,
        "args": ["serve", "--spec", "/etc/modelyard/modelset.yaml"],
        "ports": [{"name": "http", "containerPort": options.port, "protocol": "TCP"}],
        "env": env,
        "resources": resources,
        # Pulling a large model can take minutes: the startup probe waits up to 30 minutes.
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3},
        # A model that fails, or a long pull, is no reason to restart the server.
        "livenessProbe": {**alive, "periodSeconds": 20, "failureThreshold": 3},
        "volumeMounts": mounts,
        "securityContext": security,
    }
    selector = {"app.kubernetes.io/instance": full}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(full, options, labels, annotations),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            # Memory for one replica at a time on a node sized for one: recreate, not surge.
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": labels, "annotations": {"modelyard.io/spec-digest": one.digest}},
                "spec": {"containers": [container], "volumes": volumes},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(full, options, labels, {ANNOTATION_SERVED_NAME: model.name}),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": options.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return [config_map, deployment, service]


# --- KubeAI ---------------------------------------------------------------------------------------


def _kubeai_model(
    spec: Spec, model: ModelSpec, name: str, estimated: int | None, options: ExportOptions
) -> dict[str, Any]:
    ref = parse_reference(model.image)
    if not ref.is_remote:
        raise SpecError(
            f"model {model.name!r}: {model.image} is a local image; KubeAI pulls from a registry, "
            "so push it and name the registry in the spec"
        )
    if not ref.tag:
        raise SpecError(
            f"model {model.name!r}: KubeAI's Ollama engine pulls by tag; give {model.image} a tag"
        )
    need = estimated or options.fallback_bytes
    profile = options.kubeai_gpu_profile if _uses_gpu(model) else options.kubeai_profile
    units = 1 if _uses_gpu(model) else max(1, math.ceil(need / options.profile_unit_bytes))
    stays = model.pinned or math.isinf(model.keep_alive)
    # KubeAI's Ollama engine pulls with `--insecure` (plain HTTP allowed, certificates not checked)
    # when the URL asks: the one switch for both of the Settings' lists.
    without_tls = (*options.plain_http_registries, *options.insecure_registries)
    insecure = "?insecure=true" if ref.host in without_tls else ""
    body: dict[str, Any] = {
        "features": ["TextGeneration"],
        "engine": "OLlama",
        "url": f"ollama://{ref.name}:{ref.tag}{options.ollama_tag_suffix}{insecure}",
        "resourceProfile": f"{profile}:{units}",
        "minReplicas": 1 if stays else 0,
        "maxReplicas": 1,
        "scaleDownDelaySeconds": 30 if stays else max(int(model.keep_alive), 1),
        "targetRequests": model.parallel or 1,
    }
    env = {}
    if model.parallel:
        env["OLLAMA_NUM_PARALLEL"] = str(model.parallel)
    if model.context:
        env["OLLAMA_CONTEXT_LENGTH"] = str(model.context)
    if env:
        body["env"] = env
    labels = {"app.kubernetes.io/managed-by": "modelyard", LABEL_SET: spec.name}
    annotations = {
        ANNOTATION_SERVED_NAME: model.name,
        ANNOTATION_IMAGE: model.image,
        ANNOTATION_ESTIMATE: _estimate_note(estimated),
    }
    return {
        "apiVersion": "kubeai.org/v1",
        "kind": "Model",
        "metadata": _metadata(name[:KUBEAI_NAME_MAX].rstrip("-"), options, labels, annotations),
        "spec": body,
    }


# --- helpers --------------------------------------------------------------------------------------

_INVALID = re.compile(r"[^a-z0-9-]+")


def kubernetes_name(served: str) -> str:
    """A served name as a DNS label: `Gemma3:270m` → `gemma3-270m`."""
    name = _INVALID.sub("-", served.lower()).strip("-")
    return name[:KUBEAI_NAME_MAX].rstrip("-") or "model"


def resource_name(set_name: str, model: str) -> str:
    """The Deployment's and Service's name for one model of a set: a DNS-1035 label (what a
    Service's name must be: letters, digits and '-', a letter first, at most 63), kept apart from
    every other by a digest of the whole when it must be cut short."""
    whole = f"{set_name}-{model}"
    name = _INVALID.sub("-", whole.lower()).strip("-")
    if not name[:1].isalpha():
        name = "m-" + name
    if len(name) > 63:
        name = name[:54].rstrip("-") + "-" + hashlib.sha256(whole.encode()).hexdigest()[:8]
    return name


def _resource_names(spec: Spec) -> dict[str, str]:
    names: dict[str, str] = {}
    for model in spec.models:
        name = kubernetes_name(model.name)
        clash = next((served for served, taken in names.items() if taken == name), None)
        if clash is not None:
            raise SpecError(
                f"models {clash!r} and {model.name!r} both become {name!r} on Kubernetes; rename one"
            )
        names[model.name] = name
    return names


def _metadata(
    name: str, options: ExportOptions, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": options.namespace,
        "labels": dict(labels),
        "annotations": dict(annotations),
    }


def _uses_gpu(model: ModelSpec) -> bool:
    return model.gpu_layers == "all" or (isinstance(model.gpu_layers, int) and model.gpu_layers > 0)


def _quantity(size: int) -> str:
    return f"{math.ceil(size / MIB)}Mi"


def _estimate_note(estimated: int | None) -> str:
    if estimated is None:
        return "unknown: the image is not in the local store; requests use the fallback, adjust them"
    return f"{estimated / GIB:.2f}GiB (weights, KV cache and compute, from the GGUF header)"
