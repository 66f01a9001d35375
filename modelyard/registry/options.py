"""How push, pull and login reach a registry: flags and settings in one value, and the session
they open."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx

from modelyard.registry.credentials import DockerConfig, registry_host
from modelyard.registry.endpoint import Endpoint, resolve_endpoint
from modelyard.registry.locations import LocationLedger
from modelyard.registry.retry import DEFAULT_RETRY, RetryPolicy
from modelyard.registry.session import DEFAULT_TIMEOUT, RegistrySession
from modelyard.registry.speed import DEFAULT_LOW_SPEED, LowSpeed
from modelyard.registry.transfer import DEFAULT_CHUNK_BYTES
from modelyard.settings import Settings


@dataclass(frozen=True)
class RegistryOptions:
    docker_config: Path  # the directory of config.json ($DOCKER_CONFIG, default ~/.docker)
    cache_dir: Path  # where the blob-location ledger lives
    plain_http: bool = False
    insecure: bool = False
    plain_http_hosts: frozenset[str] = frozenset()  # as plain_http, for these registries only
    insecure_hosts: frozenset[str] = frozenset()  # as insecure, for these registries only
    parallel: int = 4  # blobs transferred at once
    default_registry: str | None = None  # where a pull looks for a name without a registry
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    retry: RetryPolicy = DEFAULT_RETRY
    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)  # per read and connect
    low_speed: LowSpeed = DEFAULT_LOW_SPEED  # an answer slower than this is given up (and resumed)
    transport: httpx.BaseTransport | None = field(default=None, compare=False)  # tests inject one

    @classmethod
    def from_settings(
        cls, settings: Settings, *, plain_http: bool = False, insecure: bool = False
    ) -> RegistryOptions:
        return cls(
            docker_config=settings.docker_config,
            cache_dir=settings.cache_dir,
            plain_http=plain_http,
            insecure=insecure,
            # As references name hosts: in lower case (a docs review: `VM:5000` matched no `vm:5000`).
            plain_http_hosts=frozenset(registry_host(h) for h in settings.plain_http_registries),
            insecure_hosts=frozenset(registry_host(h) for h in settings.insecure_registries),
            parallel=settings.registry_parallel,
            default_registry=settings.default_registry,
            low_speed=LowSpeed(settings.registry_low_speed_limit, settings.registry_low_speed_time),
        )

    def credentials(self) -> DockerConfig:
        return DockerConfig(self.docker_config)

    def ledger(self) -> LocationLedger:
        return LocationLedger(self.cache_dir / "registry-blobs.json")

    def endpoint(self, host: str) -> Endpoint:
        """How to reach `host`: the flags, or the hosts $MODELYARD_PLAIN_HTTP_REGISTRIES and
        $MODELYARD_INSECURE_REGISTRIES name."""
        return resolve_endpoint(
            host,
            plain_http=self.plain_http or host in self.plain_http_hosts,
            insecure=self.insecure or host in self.insecure_hosts,
        )

    def open_session(self, host: str) -> RegistrySession:
        endpoint = self.endpoint(host)
        config = self.credentials()
        return RegistrySession(
            endpoint,
            lambda: config.lookup(host),
            retry=self.retry,
            timeout=self.timeout,
            low_speed=self.low_speed,
            transport=self.transport,
        )
