"""`export k8s`: KubeAI Models and Deployments, validated against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields are errors) and KubeAI's Model CRD."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from spec_fakes import make_spec, spec_text
from spec_kubeai_schema import MODEL_SCHEMA, kubeai_rule_violations
from spec_world import build
from tinygguf import write_tiny_llama

from modelyard.errors import SpecError
from modelyard.runtime.memory import RUNNER_PROCESS_BYTES
from modelyard.settings import Settings
from modelyard.spec.daemon import export_for
from modelyard.spec.kubernetes import (
    SERVER_OVERHEAD,
    ExportOptions,
    estimate_models,
    export_caveats,
    export_kubernetes,
    export_yaml,
    kubeai_caveats,
    kubernetes_name,
    resource_name,
)
from modelyard.spec.schema import parse_spec
from modelyard.store import Store

KUBERNETES_VERSION = "1.30"
SPEC = """
models:
  - {name: chat, image: 'localhost:5000/team/gemma3:270m', parallel: 4, context: 4096, pinned: true}
  - {name: 'Code:7B', image: 'registry.example.com/team/code:q4', keepAlive: 10m, gpuLayers: all}
  - {name: paused, image: 'localhost:5000/team/x:v1', suspend: true}
"""


def validate(resource: dict[str, Any]) -> None:
    if resource["apiVersion"] == "kubeai.org/v1":
        jsonschema.validate(resource, MODEL_SCHEMA)
        assert kubeai_rule_violations(resource) == []
    else:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_every_exported_resource_validates() -> None:
    resources = export_kubernetes(make_spec(SPEC), mode="both", estimates={"chat": 3 * 2**30})
    kinds = [(r["kind"], r["metadata"]["name"]) for r in resources]
    assert kinds == [
        ("ConfigMap", "team-chat"),
        ("Deployment", "team-chat"),
        ("Service", "team-chat"),
        ("Model", "chat"),
        ("ConfigMap", "team-code-7b"),
        ("Deployment", "team-code-7b"),
        ("Service", "team-code-7b"),
        ("Model", "code-7b"),
    ]
    for resource in resources:
        validate(resource)


def test_the_deployment_serves_the_model_from_its_configmap_with_requests_from_the_estimate() -> None:
    config_map, deployment, service, _ = export_kubernetes(
        make_spec(SPEC), estimates={"chat": 3 * 2**30}, options=ExportOptions(namespace="llm")
    )[:4]
    one = parse_spec_text(config_map["data"]["modelset.yaml"])
    assert [m.name for m in one.models] == ["chat"] and one.models[0].context == 4096
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve", "--spec", "/etc/modelyard/modelset.yaml"]
    assert container["resources"]["requests"]["memory"] == "3264Mi"  # 3 GiB + 192 MiB for the server
    assert container["resources"]["limits"]["memory"] == "4080Mi"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/", "port": "http"}  # not the models' state
    assert deployment["metadata"]["namespace"] == "llm" and service["spec"]["ports"][0]["port"] == 11434
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_kubeai_models_map_the_spec() -> None:
    resources = export_kubernetes(make_spec(SPEC), mode="kubeai", estimates={"chat": 3 * 2**30})
    chat, code = (r["spec"] for r in resources)
    assert chat["url"] == "ollama://localhost:5000/team/gemma3:270m-ollama"  # what push --format both writes
    assert (chat["minReplicas"], chat["resourceProfile"], chat["targetRequests"]) == (1, "cpu:2", 4)
    assert chat["env"] == {"OLLAMA_NUM_PARALLEL": "4", "OLLAMA_CONTEXT_LENGTH": "4096"}
    assert (code["minReplicas"], code["scaleDownDelaySeconds"]) == (0, 600)  # keepAlive 10m: scale to zero
    assert code["resourceProfile"] == "nvidia-gpu-l4:1"
    assert resources[1]["metadata"]["annotations"]["modelyard.io/served-name"] == "Code:7B"
    assert "unknown" in resources[1]["metadata"]["annotations"]["modelyard.io/memory-estimate"]
    same_tag = export_kubernetes(make_spec(SPEC), mode="kubeai", options=ExportOptions(ollama_tag_suffix=""))
    assert same_tag[0]["spec"]["url"] == "ollama://localhost:5000/team/gemma3:270m"


def test_kubeai_export_says_what_it_cannot_carry() -> None:
    spec = make_spec(
        """
        models:
          - {name: chat, image: 'h.io/a:1', params: {temperature: 0.2}}
          - {name: 'Code:7B', image: 'h.io/b:1'}
          - {name: plain, image: 'h.io/c:1'}
          - {name: pinned, image: 'h.io/d:1@sha256:%s'}
        """
        % ("d" * 64)
    )
    caveats = kubeai_caveats(spec, "kubeai")
    assert len(caveats) == 3
    assert "'chat'" in caveats[0] and "params are not exported" in caveats[0]
    assert "'Code:7B'" in caveats[1] and "serves it as 'code-7b'" in caveats[1]
    # A spec review: the digest went in silence, and the pod followed the tag.
    assert "'pinned'" in caveats[2] and "exported as its tag '1'" in caveats[2]
    assert kubeai_caveats(spec, "deployment") == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("models: [{name: a, image: tiny}]", "local image", id="local-image"),
        pytest.param(f"models: [{{name: a, image: 'h.io/a@sha256:{'a' * 64}'}}]", "by tag", id="digest-only"),
        pytest.param(
            "models: [{name: 'a:b', image: 'h.io/a:1'}, {name: 'a/b', image: 'h.io/b:1'}]",
            "both become",
            id="clash",
        ),
    ],
)
def test_what_kubeai_cannot_take_is_a_clear_error(body: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        export_kubernetes(make_spec(body), mode="kubeai")


@pytest.mark.parametrize(
    ("served", "name"),
    [
        pytest.param("chat", "chat", id="plain"),
        pytest.param("Gemma3:270m", "gemma3-270m", id="tag"),
        pytest.param("team/nlp.model", "team-nlp-model", id="path"),
        pytest.param("x" * 60, "x" * 40, id="long"),
    ],
)
def test_kubernetes_names(served: str, name: str) -> None:
    assert kubernetes_name(served) == name


def test_estimates_come_from_images_in_the_store(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    store = Store(settings.store_dir)
    build(store, write_tiny_llama(tmp_path / "t.gguf"), "registry.example/team/tiny:v1", tmp_path)
    spec_file = tmp_path / "m.yaml"
    spec_file.write_text(
        "apiVersion: modelyard/v1\nkind: ModelSet\nspec:\n  models:\n"
        "    - {name: tiny, image: 'registry.example/team/tiny:v1', parallel: 2}\n"
        "    - {name: gone, image: 'registry.example/team/gone:v1'}\n"
    )
    estimates = estimate_models(parse_spec_text(spec_file.read_text()), store)
    model = estimates["tiny"] - RUNNER_PROCESS_BYTES  # the runner's process is counted as the scheduler does
    assert set(estimates) == {"tiny"} and 1_000_000 < model < 10_000_000
    text = export_for(spec_file, settings, mode="deployment")
    resources = list(yaml.safe_load_all(text))
    assert text.endswith(export_yaml(resources))
    # Listening to the whole cluster, the pods require an API key from a Secret, which is said.
    assert text.startswith("# warning: the pods read their API key from Secret 'modelyard-api-key'")
    env = {e["name"]: e for e in resources[1]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELYARD_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "modelyard-api-key", "key": "key"}
    }
    open_text = export_for(spec_file, settings, mode="deployment", options=ExportOptions(api_key_secret=""))
    assert "MODELYARD_API_KEY" not in open_text and "with no API key" in open_text
    assert "MODELYARD_PLAIN_HTTP_REGISTRIES" not in text
    plain = replace(settings, plain_http_registries=("registry.example",))
    assert "MODELYARD_PLAIN_HTTP_REGISTRIES" in export_for(spec_file, plain, mode="deployment"), (
        "the command passes its Settings' registries on (an audit: it ignored them)"
    )
    memory = resources[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"]
    assert memory == f"{math.ceil((estimates['tiny'] + SERVER_OVERHEAD) / 2**20)}Mi"
    for resource in resources:
        validate(resource)


def parse_spec_text(text: str) -> Any:
    from modelyard.spec.schema import SpecDocument

    return parse_spec([SpecDocument("m.yaml", text)])


def test_the_validation_itself_catches_a_bad_resource() -> None:
    resources = export_kubernetes(make_spec(SPEC), mode="both")
    deployment, model = resources[1], resources[3]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    model["spec"]["replicaz"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(model)


def test_the_cli_passes_namespace_image_and_registry_secret(tmp_path: Path) -> None:
    import io

    from modelyard.cli import main

    (tmp_path / "spec.yaml").write_text(spec_text(SPEC))
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["export", "k8s", "-f", str(tmp_path / "spec.yaml"), "--mode", "deployment", "--namespace", "ml",
         "--server-image", "registry.example.com/modelyard:1.2", "--docker-config-secret", "regcred"],
        stdout=out, stderr=err,
    )  # fmt: skip
    assert code == 0, err.getvalue()
    resources = list(yaml.safe_load_all(out.getvalue()))
    assert resources and all(r["metadata"]["namespace"] == "ml" for r in resources)
    deployments = [r for r in resources if r["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert {c["image"] for c in pod["containers"]} == {"registry.example.com/modelyard:1.2"}
        assert any(v.get("secret", {}).get("secretName") == "regcred" for v in pod.get("volumes", []))
    for resource in resources:
        validate(resource)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        pytest.param(["--namespace", "My_NS"], "--namespace 'My_NS'", id="namespace"),
        pytest.param(["--server-image", ""], "--server-image ''", id="image-empty"),
        pytest.param(
            ["--docker-config-secret", "Bad Secret"], "--docker-config-secret 'Bad Secret'", id="secret"
        ),
        pytest.param(["--api-key-secret", "x y"], "--api-key-secret 'x y'", id="key-secret"),
    ],
)
def test_the_cli_refuses_flags_the_api_server_would(tmp_path: Path, flags: list[str], said: str) -> None:
    """A spec review: each went into the manifests unchecked, exit 0."""
    import io

    from modelyard.cli import main

    (tmp_path / "spec.yaml").write_text(spec_text(SPEC))
    out, err = io.StringIO(), io.StringIO()
    code = main(["export", "k8s", "-f", str(tmp_path / "spec.yaml"), *flags], stdout=out, stderr=err)
    assert code == 1 and out.getvalue() == ""
    assert err.getvalue().startswith(f"Error: not a valid Kubernetes export: {said}"), err.getvalue()


@pytest.mark.parametrize(
    ("set_name", "model", "expected"),
    [
        pytest.param("default", "chat", "default-chat", id="plain"),
        pytest.param("team.prod", "gemma3-270m", "team-prod-gemma3-270m", id="no-dots-in-a-service-name"),
        pytest.param("7th", "chat", "m-7th-chat", id="a-letter-first"),
    ],
)
def test_resource_names_are_dns_1035_labels(set_name: str, model: str, expected: str) -> None:
    assert resource_name(set_name, model) == expected


def test_long_resource_names_stay_apart() -> None:
    long = "a" * 57
    a, b = resource_name(long, "chat-a"), resource_name(long, "chat-b")
    assert a != b and len(a) <= 63 and len(b) <= 63
    assert all(re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n) for n in (a, b))


def test_a_deployment_keeps_the_specs_settings_and_says_what_a_cluster_cannot_do() -> None:
    spec = make_spec(
        """
        selfHeal: false
        prune: false
        memory: {ram: 2GiB}
        models: [{name: chat, image: 'localhost:5055/team/m0:v1'}]
        """
    )
    config_map = export_kubernetes(spec, mode="deployment")[0]
    one = parse_spec_text(config_map["data"]["modelset.yaml"])
    assert one.body.self_heal is False and one.body.prune is False
    caveats = export_caveats(spec, "deployment")
    assert any("spec.memory is a budget for one machine" in c for c in caveats)
    assert any("localhost:5055 inside a pod is the pod itself" in c for c in caveats)
    ipv6 = make_spec("models: [{name: chat, image: '[::1]:5000/team/m0:v1'}]")
    assert any("[::1]:5000 inside a pod" in c for c in export_caveats(ipv6, "deployment"))
    with pytest.raises(SpecError, match="is a local image; the pod pulls from a registry"):
        export_kubernetes(make_spec("models: [{name: chat, image: m0}]"), mode="deployment")


def _container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = [r for r in resources if r["kind"] == "Deployment"]
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


INTERNAL = "registry.internal:5000"


PLAIN, INSECURE = "MODELYARD_PLAIN_HTTP_REGISTRIES", "MODELYARD_INSECURE_REGISTRIES"


@pytest.mark.parametrize(
    ("plain_http", "insecure", "env", "url_suffix"),
    [
        pytest.param((INTERNAL,), (), {PLAIN: INTERNAL}, "?insecure=true", id="plain-http"),
        pytest.param((), (INTERNAL, "o:1"), {INSECURE: f"{INTERNAL},o:1"}, "?insecure=true", id="insecure"),
        pytest.param(("other:5000",), (), {PLAIN: "other:5000"}, "", id="another-host"),
        pytest.param((), (), {}, "", id="none"),
    ],
)
def test_registries_reached_without_tls_are_reached_so_from_the_cluster(
    tmp_path: Path,
    plain_http: tuple[str, ...],
    insecure: tuple[str, ...],
    env: dict[str, str],
    url_suffix: str,
) -> None:
    """Found in an audit: with MODELYARD_PLAIN_HTTP_REGISTRIES=registry.internal:5000 the
    Deployments got no such variable (the pods tried HTTPS), and KubeAI's `ollama://` URL lacked
    `?insecure=true`. The export takes them from the Settings."""
    settings = Settings(home=tmp_path, plain_http_registries=plain_http, insecure_registries=insecure)
    options = ExportOptions().with_settings(settings)
    spec = make_spec(f"models: [{{name: chat, image: '{INTERNAL}/team/m:v1'}}]")
    resources = export_kubernetes(spec, mode="both", options=options)
    given = {e["name"]: e["value"] for e in _container(resources)["env"] if "REGISTRIES" in e["name"]}
    assert given == env
    [model] = [r for r in resources if r["kind"] == "Model"]
    assert model["spec"]["url"] == f"ollama://{INTERNAL}/team/m:v1-ollama{url_suffix}"
    for resource in resources:
        validate(resource)


def test_the_pods_memory_budget_is_its_limit_so_a_tag_move_unloads_the_old_one_first() -> None:
    """Found in an audit: the pod had a memory limit but its spec said `memory: {ram: auto}`, which
    reads the node's MemAvailable: a tag move loaded the new digest beside the old one and the
    container was OOM-killed. Now the exported spec's budget is the limit less the server's
    overhead, and the reconciler, planning that move, unloads the old one first."""
    from spec_fakes import digest

    from modelyard.spec.plan import (
        Applied,
        ImageState,
        Inventory,
        Memory,
        Observed,
        Running,
        plan,
        target_for,
    )

    estimate = 3 * 2**30
    resources = export_kubernetes(make_spec(SPEC), mode="deployment", estimates={"chat": estimate})
    one = parse_spec_text(resources[0]["data"]["modelset.yaml"])
    container = _container(resources[:3])
    limit = int(container["resources"]["limits"]["memory"].removesuffix("Mi")) * 2**20
    assert one.body.memory.ram == limit - SERVER_OVERHEAD and estimate <= one.body.memory.ram
    assert {"name": "MODELYARD_RAM_BUDGET", "value": f"{(limit - SERVER_OVERHEAD) // 2**20}MiB"} in container[
        "env"
    ]

    [model] = one.models
    old = target_for(model, {model.image: digest("a")})
    remembered = Applied(
        old.digest, old.load_key, old.options_key, old.serve_key, 4096, 4, old.keep_alive, session="s"
    )
    observed = Observed(
        running={"chat": Running("chat", digest("a"), "ready", estimate, context_length=4096, slots=4)},
        images={model.image: ImageState(model.image, digest("b"), digest("b"))},  # the tag moved
        footprints={"chat": estimate},
        budget=64 * 2**30,  # "auto" in a pod: the node's memory
        now=0.0,
        session="s",
    )
    [swap] = plan(one, observed, Inventory({"chat": Memory(remembered)}, {})).actions
    assert swap.kind.value == "swap" and swap.side_by_side is False, swap


def test_the_yaml_has_no_anchors_and_the_pods_drop_privileges() -> None:
    """Found in an audit: the probes were written with YAML anchors (`&id001` / `*id001`), and the
    container ran with the runtime's default capabilities and privilege escalation allowed."""
    resources = export_kubernetes(make_spec(SPEC), mode="deployment")
    text = export_yaml(resources)
    assert not re.search(r"[&*]id\d", text), text
    assert text.count("path: /health") == 4  # startup and readiness probes, in both Deployments
    assert _container(resources[:3])["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    low = export_kubernetes(make_spec(SPEC), mode="deployment", options=ExportOptions(port=80))
    capabilities = _container(low[:3])["securityContext"]["capabilities"]
    assert capabilities == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}  # port 80
    for resource in resources + low:
        validate(resource)
