"""The registry's pure decisions, table-driven: endpoints, auth challenges, retries, manifest
formats, mount sources and push plans. No network, no files."""

from __future__ import annotations

import json

import pytest

from modelyard.errors import RegistryError, RegistryProtocolError
from modelyard.reference import parse_reference
from modelyard.registry.challenge import Challenge, parse_challenges
from modelyard.registry.endpoint import is_loopback, resolve_endpoint
from modelyard.registry.formats import (
    ANNOTATION_SOURCE_DIGEST,
    CONFIG_OLLAMA,
    LAYER_DOCKER_GGUF,
    LAYER_DOCKER_LICENSE,
    LAYER_DOCKER_MMPROJ,
    LAYER_DOCKER_TEMPLATE,
    LAYER_OLLAMA_MODEL,
    LAYER_OLLAMA_PROJECTOR,
    SourceFormat,
    UnsupportedManifestError,
    classify,
    pick_from_index,
    to_modelpack,
    to_ollama,
)
from modelyard.registry.locations import EMPTY, mount_source, remember
from modelyard.registry.options import RegistryOptions
from modelyard.registry.push import PushFormat, plan_push
from modelyard.registry.retry import RetryPolicy, parse_retry_after, retry_delay
from modelyard.registry.speed import LowSpeed, SpeedWatch
from modelyard.settings import Settings
from modelyard.store.image import (
    ANNOTATION_FILEPATH,
    ANNOTATION_TITLE,
    ARTIFACT_MODELPACK,
    CONFIG_MODELPACK,
    LAYER_ADAPTER,
    LAYER_LICENSE,
    LAYER_MODELFILE,
    LAYER_PARAMS,
    LAYER_SYSTEM,
    LAYER_TEMPLATE,
    LAYER_WEIGHT,
    MANIFEST_DOCKER,
    MANIFEST_OCI,
    Descriptor,
    Manifest,
    parse_manifest,
    sha256_digest,
)


def d(n: int) -> str:
    return "sha256:" + f"{n:x}".rjust(64, "0")


# --- endpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "plain_http", "insecure", "base_url", "verify"),
    [
        pytest.param("ghcr.io", False, False, "https://ghcr.io", True, id="https-verified-by-default"),
        pytest.param("reg.example:5000", True, False, "http://reg.example:5000", False, id="plain-http-flag"),
        pytest.param("reg.example", False, True, "https://reg.example", False, id="insecure-skips-verify"),
        pytest.param("localhost:5000", False, False, "http://localhost:5000", False, id="localhost-is-http"),
        pytest.param("127.0.0.1:5000", False, False, "http://127.0.0.1:5000", False, id="ipv4-loopback-http"),
        pytest.param("127.9.8.7", False, False, "http://127.9.8.7", False, id="all-of-127/8"),
        pytest.param("[::1]:5000", False, False, "http://[::1]:5000", False, id="ipv6-loopback-http"),
        pytest.param(
            "127.0.0.1:5443", False, True, "https://127.0.0.1:5443", False, id="insecure-tls-on-loopback"
        ),
        pytest.param(
            "docker.io", False, False, "https://registry-1.docker.io", True, id="docker-hub-api-host"
        ),
        pytest.param("128.0.0.1", False, False, "https://128.0.0.1", True, id="not-loopback"),
    ],
)
def test_resolve_endpoint(host: str, plain_http: bool, insecure: bool, base_url: str, verify: bool) -> None:
    endpoint = resolve_endpoint(host, plain_http=plain_http, insecure=insecure)
    assert (endpoint.base_url, endpoint.verify_tls, endpoint.host) == (base_url, verify, host)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        pytest.param("localhost", True, id="localhost"),
        pytest.param("LOCALHOST:80", True, id="case-and-port"),
        pytest.param("registry.localhost", True, id="dot-localhost"),
        pytest.param("127.0.0.1", True, id="127.0.0.1"),
        pytest.param("[::1]", True, id="ipv6"),
        pytest.param("localhost.example.com", False, id="lookalike"),
        pytest.param("10.0.0.1:5000", False, id="private-not-loopback"),
        pytest.param("[2001:db8::1]:5000", False, id="ipv6-global"),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- challenges ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param('Basic realm="my-registry"', [Challenge("basic", {"realm": "my-registry"})], id="basic"),
        pytest.param(
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/ubuntu:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/ubuntu:pull",
                    },
                )
            ],
            id="bearer-docker-hub",
        ),
        pytest.param(
            'bearer REALM="r", scope="repository:a:pull,push repository:b:pull"',
            [Challenge("bearer", {"realm": "r", "scope": "repository:a:pull,push repository:b:pull"})],
            id="case-spaces-and-comma-inside-quotes",
        ),
        pytest.param(
            'Basic realm="a, b", Bearer realm="https://t/token",service=reg',
            [
                Challenge("basic", {"realm": "a, b"}),
                Challenge("bearer", {"realm": "https://t/token", "service": "reg"}),
            ],
            id="two-challenges-unquoted-value",
        ),
        pytest.param(
            r'Basic realm="say \"hi\""', [Challenge("basic", {"realm": 'say "hi"'})], id="escaped-quotes"
        ),
        pytest.param("Negotiate", [Challenge("negotiate", {})], id="scheme-only"),
        pytest.param("", [], id="empty"),
        pytest.param(',,"garbage', [], id="garbage-skipped"),
    ],
)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert list(parse_challenges(header)) == expected


# --- retries -------------------------------------------------------------------------------------

POLICY = RetryPolicy(attempts=4, base_s=0.5, cap_s=3.0)


@pytest.mark.parametrize(
    ("attempt", "status", "network", "retry_after", "rand", "delay"),
    [
        pytest.param(0, None, True, None, 1.0, 0.5, id="network-error-first-retry"),
        pytest.param(1, None, True, None, 1.0, 1.0, id="exponential"),
        pytest.param(2, 503, False, None, 1.0, 2.0, id="503"),
        pytest.param(2, 502, False, None, 0.25, 0.5, id="jittered"),
        pytest.param(3, 500, False, None, 1.0, None, id="attempts-spent"),
        pytest.param(0, 429, False, "2", 0.1, 2.0, id="429-honours-retry-after"),
        pytest.param(0, 429, False, "120", 0.1, 3.0, id="retry-after-capped"),
        pytest.param(0, 408, False, None, 1.0, 0.5, id="408"),
        pytest.param(0, 404, False, None, 1.0, None, id="404-is-an-answer"),
        pytest.param(0, 401, False, None, 1.0, None, id="401-not-retried"),
        pytest.param(0, 400, False, None, 1.0, None, id="400-not-retried"),
        pytest.param(0, 200, False, None, 1.0, None, id="success"),
    ],
)
def test_retry_delay(
    attempt: int, status: int | None, network: bool, retry_after: str | None, rand: float, delay: float | None
) -> None:
    got = retry_delay(
        POLICY, attempt, status=status, network_error=network, retry_after=retry_after, rand=rand
    )
    assert got == delay


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(attempts=50, base_s=0.5, cap_s=3.0)
    assert retry_delay(policy, 40, network_error=True, rand=0.999) == pytest.approx(2.997)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("3", 3.0, id="seconds"),
        pytest.param(" 1.5 ", 1.5, id="fraction"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", None, id="http-date-ignored"),
        pytest.param("-1", None, id="negative"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


# --- formats -------------------------------------------------------------------------------------


def layer(media_type: str, n: int, **annotations: str) -> Descriptor:
    return Descriptor(media_type, d(n), n * 10, annotations)


def manifest(
    config_type: str, *layers: Descriptor, media_type: str = MANIFEST_OCI, artifact: str | None = None
) -> Manifest:
    return Manifest(
        Descriptor(config_type, d(999), 99), tuple(layers), media_type=media_type, artifact_type=artifact
    )


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        pytest.param(
            manifest(CONFIG_MODELPACK, layer(LAYER_WEIGHT, 1)), SourceFormat.MODELPACK, id="modelpack-config"
        ),
        pytest.param(
            manifest(
                "application/vnd.oci.empty.v1+json", layer(LAYER_WEIGHT, 1), artifact=ARTIFACT_MODELPACK
            ),
            SourceFormat.MODELPACK,
            id="modelpack-artifact-type",
        ),
        pytest.param(
            manifest(
                "application/vnd.unknown.config.v1+json", layer("application/vnd.cncf.model.weight.v1.tar", 1)
            ),
            SourceFormat.MODELPACK,
            id="others-modelpack-layers",
        ),
        pytest.param(
            manifest(CONFIG_OLLAMA, layer(LAYER_OLLAMA_MODEL, 1), media_type=MANIFEST_DOCKER),
            SourceFormat.OLLAMA,
            id="ollama",
        ),
        pytest.param(
            manifest("application/vnd.docker.ai.model.config.v0.1+json", layer(LAYER_DOCKER_GGUF, 1)),
            SourceFormat.DOCKER,
            id="docker-model-runner",
        ),
    ],
)
def test_classify(image: Manifest, expected: SourceFormat) -> None:
    assert classify(image) is expected


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        pytest.param(
            manifest(
                "application/vnd.oci.image.config.v1+json",
                layer("application/vnd.oci.image.layer.v1.tar+gzip", 1),
            ),
            "not a model image",
            id="container-image",
        ),
        pytest.param(
            manifest(CONFIG_OLLAMA, layer(LAYER_SYSTEM, 1), media_type=MANIFEST_DOCKER),
            "without a model layer",
            id="ollama-without-weights",
        ),
        pytest.param(
            manifest(
                "application/vnd.docker.ai.model.config.v0.2+json",
                layer("application/vnd.docker.ai.safetensors", 1),
            ),
            "safetensors",
            id="docker-safetensors",
        ),
    ],
)
def test_classify_refuses(image: Manifest, reason: str) -> None:
    with pytest.raises(UnsupportedManifestError, match=reason):
        classify(image)


def test_ollama_to_modelpack_same_blobs_fixed_paths_unknown_kept() -> None:
    ollama = manifest(
        CONFIG_OLLAMA,
        layer(LAYER_OLLAMA_MODEL, 1, **{ANNOTATION_TITLE: "../../etc/x"}),
        layer(LAYER_TEMPLATE, 2),
        layer("application/vnd.ollama.image.prompt", 3),
        layer(LAYER_SYSTEM, 4),
        layer(LAYER_ADAPTER, 5),
        layer(LAYER_ADAPTER, 6),
        layer(LAYER_OLLAMA_PROJECTOR, 7),
        layer("application/vnd.example.future", 8),
        layer(LAYER_LICENSE, 9),
        media_type=MANIFEST_DOCKER,
    )
    config = {"model_format": "gguf", "model_family": "llama", "model_type": "8.0B", "file_type": "Q4_K_M"}
    converted = to_modelpack(ollama, config, SourceFormat.OLLAMA, d(777))
    m = converted.manifest
    assert (m.media_type, m.artifact_type, m.config.media_type) == (
        MANIFEST_OCI,
        ARTIFACT_MODELPACK,
        CONFIG_MODELPACK,
    )
    assert sorted(x.digest for x in m.layers) == sorted(x.digest for x in ollama.layers)
    assert [(x.media_type, x.annotations[ANNOTATION_FILEPATH]) for x in m.layers] == [
        (LAYER_WEIGHT, "model.gguf"),
        (LAYER_WEIGHT, "model.mmproj"),
        (LAYER_ADAPTER, "adapters/adapter-1.gguf"),
        (LAYER_ADAPTER, "adapters/adapter-2.gguf"),
        (LAYER_TEMPLATE, "modelfile/template"),
        (LAYER_TEMPLATE, "modelfile/template"),
        (LAYER_SYSTEM, "modelfile/system.txt"),
        (LAYER_LICENSE, "LICENSE"),
        ("application/vnd.example.future", f"other/{d(8)[7:]}"),
    ]
    assert all(".." not in x.annotations[ANNOTATION_FILEPATH] for x in m.layers)
    assert m.annotations[ANNOTATION_SOURCE_DIGEST] == d(777)
    assert json.loads(converted.config) == {
        "descriptor": {"createdAt": "1970-01-01T00:00:00Z", "family": "llama"},
        "config": {"architecture": "llama", "format": "gguf", "paramSize": "8.0B", "quantization": "Q4_K_M"},
        "modelfs": {"type": "layers", "diffIds": [x.digest for x in m.layers]},
    }
    assert m.config.digest == sha256_digest(converted.config)
    # Deterministic: the same source gives the same bytes, so the local ID is stable.
    assert to_modelpack(ollama, config, SourceFormat.OLLAMA, d(777)).manifest.to_bytes() == m.to_bytes()
    assert parse_manifest(m.to_bytes()) == m


def test_docker_model_runner_to_modelpack() -> None:
    dmr = manifest(
        "application/vnd.docker.ai.model.config.v0.1+json",
        layer(LAYER_DOCKER_GGUF, 1),
        layer(LAYER_DOCKER_GGUF, 2),
        layer(LAYER_DOCKER_MMPROJ, 3),
        layer(LAYER_DOCKER_TEMPLATE, 4),
        layer(LAYER_DOCKER_LICENSE, 5),
        layer("application/vnd.docker.ai.vllm.config.tar", 6),
    )
    config = {
        "config": {
            "format": "gguf",
            "quantization": "Q4_K_M",
            "parameters": "268.10M",
            "architecture": "gemma3",
            "context_size": 8192,
            "gguf": {"general.architecture": "gemma3"},
        },
        "descriptor": {"created": "2025-01-01T00:00:00Z"},
        "rootfs": {"type": "rootfs", "diff_ids": []},
    }
    converted = to_modelpack(dmr, config, SourceFormat.DOCKER, d(1))
    m = converted.manifest
    assert [(x.media_type, x.annotations[ANNOTATION_FILEPATH]) for x in m.layers] == [
        (LAYER_WEIGHT, "model-00001-of-00002.gguf"),
        (LAYER_WEIGHT, "model-00002-of-00002.gguf"),
        (LAYER_WEIGHT, "model.mmproj"),
        (LAYER_TEMPLATE, "modelfile/template"),
        (LAYER_LICENSE, "LICENSE"),
        ("application/vnd.docker.ai.vllm.config.tar", f"other/{d(6)[7:]}"),
    ]
    assert m.annotations["io.modelyard.gguf.context-length"] == "8192"
    assert m.annotations["org.opencontainers.image.created"] == "2025-01-01T00:00:00Z"
    assert json.loads(converted.config)["config"] == {
        "architecture": "gemma3",
        "format": "gguf",
        "paramSize": "268.10M",
        "quantization": "Q4_K_M",
    }


def test_modelpack_to_ollama() -> None:
    ours = manifest(
        CONFIG_MODELPACK,
        layer(LAYER_WEIGHT, 1, **{ANNOTATION_FILEPATH: "model.gguf"}),
        layer(LAYER_WEIGHT, 2, **{ANNOTATION_FILEPATH: "model.mmproj"}),
        layer(LAYER_TEMPLATE, 3),
        layer(LAYER_PARAMS, 4),
        layer(LAYER_MODELFILE, 5),
        artifact=ARTIFACT_MODELPACK,
    )
    config = {
        "config": {
            "architecture": "gemma3",
            "format": "gguf",
            "paramSize": "268.10M",
            "quantization": "Q4_K_M",
        }
    }
    converted = to_ollama(ours, config)
    m = converted.manifest
    assert (m.media_type, m.config.media_type, m.artifact_type) == (MANIFEST_DOCKER, CONFIG_OLLAMA, None)
    assert [x.media_type for x in m.layers] == [
        LAYER_OLLAMA_MODEL,
        LAYER_OLLAMA_PROJECTOR,
        LAYER_TEMPLATE,
        LAYER_PARAMS,
        LAYER_MODELFILE,
    ]
    assert [x.digest for x in m.layers] == [x.digest for x in ours.layers]
    assert all(not x.annotations for x in m.layers)
    assert json.loads(converted.config) == {
        "model_format": "gguf",
        "model_family": "gemma3",
        "model_families": ["gemma3"],
        "model_type": "268.10M",
        "file_type": "Q4_K_M",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [x.digest for x in ours.layers]},
    }
    # and back: Ollama's manifest converts to ModelPack over the very same blobs
    back = to_modelpack(m, json.loads(converted.config), SourceFormat.OLLAMA, sha256_digest(m.to_bytes()))
    assert [x.digest for x in back.manifest.layers] == [x.digest for x in ours.layers]


@pytest.mark.parametrize(
    ("entries", "chosen"),
    [
        pytest.param([{"digest": d(1)}], d(1), id="single-entry"),
        pytest.param(
            [
                {"digest": d(1), "platform": {"os": "linux", "architecture": "arm64"}},
                {"digest": d(2), "platform": {"os": "linux", "architecture": "amd64"}},
            ],
            d(2),
            id="linux-amd64",
        ),
    ],
)
def test_pick_from_index(entries: list[dict[str, object]], chosen: str) -> None:
    assert pick_from_index(json.dumps({"schemaVersion": 2, "manifests": entries}).encode()) == chosen


@pytest.mark.parametrize(
    ("index", "reason"),
    [
        pytest.param(
            {"manifests": [{"digest": d(1)}, {"digest": d(2)}]}, "index of 2 manifests", id="ambiguous"
        ),
        pytest.param({"manifests": []}, "index of 0 manifests", id="empty"),
        pytest.param({"layers": []}, "without a list", id="not-an-index"),
    ],
)
def test_pick_from_index_refuses(index: dict[str, object], reason: str) -> None:
    with pytest.raises(UnsupportedManifestError, match=reason):
        pick_from_index(json.dumps(index).encode())


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param([{"digest": "sha256:abc"}], id="short"),
        pytest.param([{"digest": "sha256:../../blobs/x"}], id="a-path"),
        pytest.param([{"digest": "latest"}], id="a-tag"),
        pytest.param([{"digest": 7}], id="a-number"),
        pytest.param([{"size": 7}], id="missing"),
        pytest.param(
            [{"digest": d(1)}, {"platform": {"os": "linux", "architecture": "amd64"}}], id="amd64-without-one"
        ),
    ],
)
def test_pick_from_index_refuses_an_entry_that_is_not_a_digest(entries: list[dict[str, object]]) -> None:
    with pytest.raises(RegistryProtocolError, match="not a sha256 digest"):
        pick_from_index(json.dumps({"schemaVersion": 2, "manifests": entries}).encode())


# --- mount sources ---------------------------------------------------------------------------------


def test_mount_source_prefers_the_latest_other_repository_on_the_same_host() -> None:
    locations = remember(EMPTY, "reg:5000", "team/a", [d(1), d(2)])
    locations = remember(locations, "reg:5000", "team/b", [d(1)])
    locations = remember(locations, "other:5000", "team/c", [d(3)])
    assert mount_source(locations, "reg:5000", "team/z", d(1)) == "team/b"
    assert mount_source(locations, "reg:5000", "team/b", d(1)) == "team/a"
    assert mount_source(locations, "reg:5000", "team/a", d(2)) is None  # only in the target itself
    assert mount_source(locations, "reg:5000", "team/z", d(3)) is None  # on another registry
    assert mount_source(EMPTY, "reg:5000", "team/z", d(1)) is None


# --- push plans ----------------------------------------------------------------------------------

OURS = manifest(CONFIG_MODELPACK, layer(LAYER_WEIGHT, 1), layer(LAYER_SYSTEM, 2), artifact=ARTIFACT_MODELPACK)
CONFIG = {"config": {"architecture": "llama", "format": "gguf"}}


@pytest.mark.parametrize(
    ("target", "format", "pushed"),
    [
        pytest.param(
            "reg:5000/ns/m:v1", PushFormat.MODELPACK, [("reg:5000/ns/m:v1", MANIFEST_OCI)], id="modelpack"
        ),
        pytest.param(
            "reg:5000/ns/m:v1",
            PushFormat.OLLAMA,
            [("reg:5000/ns/m:v1", MANIFEST_DOCKER)],
            id="ollama-same-tag",
        ),
        pytest.param(
            "reg:5000/ns/m:v1",
            PushFormat.BOTH,
            [("reg:5000/ns/m:v1", MANIFEST_OCI), ("reg:5000/ns/m:v1-ollama", MANIFEST_DOCKER)],
            id="both-suffixed",
        ),
    ],
)
def test_plan_push(target: str, format: PushFormat, pushed: list[tuple[str, str]]) -> None:
    plan = plan_push(parse_reference(target), OURS, OURS.to_bytes(), format, CONFIG)
    assert [(str(m.reference), m.manifest.media_type) for m in plan.manifests] == pushed
    assert plan.manifests[0].data == (
        OURS.to_bytes() if format is not PushFormat.OLLAMA else plan.manifests[0].manifest.to_bytes()
    )
    assert len(plan.extra_blobs) == (0 if format is PushFormat.MODELPACK else 1)


def test_plan_push_to_a_digest_is_modelpack_only() -> None:
    with pytest.raises(RegistryError, match="ModelPack manifest only"):
        plan_push(parse_reference(f"reg:5000/ns/m@{d(5)}"), OURS, OURS.to_bytes(), PushFormat.BOTH, CONFIG)


@pytest.mark.parametrize(
    ("host", "base_url", "verify"),
    [
        pytest.param("10.0.0.5:5000", "http://10.0.0.5:5000", False, id="plain-http-listed"),
        pytest.param("reg.lan", "http://reg.lan", False, id="plain-http-listed-without-port"),
        pytest.param("self.signed", "https://self.signed", False, id="insecure-listed"),
        pytest.param("ghcr.io", "https://ghcr.io", True, id="any-other"),
        pytest.param("reg.lan:5000", "https://reg.lan:5000", True, id="another-port-is-another-registry"),
        # Listed in any case: host names have none (a docs review: `VM:44625` missed `vm:44625`).
        pytest.param("upper.lan:5000", "http://upper.lan:5000", False, id="listed-in-upper-case"),
    ],
)
def test_registries_listed_in_settings_are_reached_as_listed(host: str, base_url: str, verify: bool) -> None:
    """What `serve --spec` pulls from too: it takes no --plain-http or --insecure flag."""
    settings = Settings.from_env(
        {
            "MODELYARD_PLAIN_HTTP_REGISTRIES": "10.0.0.5:5000, reg.lan, UPPER.lan:5000",
            "MODELYARD_INSECURE_REGISTRIES": "self.signed",
            "HOME": "/nonexistent",
        }
    )
    session = RegistryOptions.from_settings(settings).open_session(host)
    assert (session.endpoint.base_url, session.endpoint.verify_tls) == (base_url, verify)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, "registry.ollama.ai", id="ollamas-by-default"),
        pytest.param({"MODELYARD_DEFAULT_REGISTRY": "mirror.lan:5000"}, "mirror.lan:5000", id="a-mirror"),
        pytest.param({"MODELYARD_DEFAULT_REGISTRY": " "}, None, id="empty-none"),
    ],
)
def test_the_default_registry_of_names_without_one(environ: dict[str, str], expected: str | None) -> None:
    settings = Settings.from_env({**environ, "HOME": "/nonexistent"})
    assert RegistryOptions.from_settings(settings).default_registry == expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, LowSpeed(1024, 60), id="a-kib-a-second-over-a-minute"),
        pytest.param(
            {"MODELYARD_REGISTRY_LOW_SPEED_LIMIT": "10KiB", "MODELYARD_REGISTRY_LOW_SPEED_TIME": "30"},
            LowSpeed(10240, 30),
            id="set",
        ),
        pytest.param({"MODELYARD_REGISTRY_LOW_SPEED_LIMIT": "0"}, LowSpeed(0, 60), id="none"),
    ],
)
def test_the_low_speed_limit_from_the_environment(environ: dict[str, str], expected: LowSpeed) -> None:
    settings = Settings.from_env({**environ, "HOME": "/nonexistent"})
    options = RegistryOptions.from_settings(settings)
    assert options.low_speed == expected
    assert options.open_session("reg.example").low_speed == expected


@pytest.mark.parametrize(
    ("environ", "error"),
    [
        pytest.param({"MODELYARD_REGISTRY_LOW_SPEED_LIMIT": "fast"}, "LOW_SPEED_LIMIT: 'fast' is not a size"),
        pytest.param({"MODELYARD_REGISTRY_LOW_SPEED_TIME": "0"}, "LOW_SPEED_TIME must be a positive integer"),
        pytest.param(
            {"MODELYARD_REGISTRY_LOW_SPEED_TIME": "1m"}, "LOW_SPEED_TIME must be a positive integer"
        ),
    ],
)
def test_a_low_speed_limit_that_is_not_one_is_refused(environ: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Settings.from_env({**environ, "HOME": "/nonexistent"})


WINDOW = LowSpeed(bytes_per_s=100, seconds=10)  # 1,000 bytes in every 10 s


@pytest.mark.parametrize(
    ("watch", "done", "now", "expected"),
    [
        pytest.param(SpeedWatch(WINDOW, 0.0), 999, 9.9, SpeedWatch(WINDOW, 0.0), id="under-way"),
        pytest.param(SpeedWatch(WINDOW, 0.0), 999, 10.0, None, id="too-few-by-its-end"),
        pytest.param(
            SpeedWatch(WINDOW, 0.0), 1000, 10.0, SpeedWatch(WINDOW, 10.0, 1000), id="enough-by-its-end"
        ),
        pytest.param(
            SpeedWatch(WINDOW, 0.0), 1000, 0.5, SpeedWatch(WINDOW, 0.5, 1000), id="enough-starts-anew"
        ),
        pytest.param(SpeedWatch(WINDOW, 5.0, 1000), 1999, 15.0, None, id="counted-from-the-window-start"),
        pytest.param(SpeedWatch(WINDOW, 5.0, 1000), 1500, 14.0, SpeedWatch(WINDOW, 5.0, 1000), id="half-way"),
        pytest.param(
            SpeedWatch(LowSpeed(0, 10), 0.0), 0, 1e9, SpeedWatch(LowSpeed(0, 10), 1e9), id="no-limit"
        ),
    ],
)
def test_a_speed_watch_ends_a_window_that_brought_too_few_bytes(
    watch: SpeedWatch, done: int, now: float, expected: SpeedWatch | None
) -> None:
    assert watch.moved(done, now) == expected
