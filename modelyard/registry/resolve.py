"""What a tag points to now, without pulling: the digest `pull` would record as `remote_digest`.

A HEAD of the manifest answers it in one round trip (and, on Docker Hub, without counting against
the pull rate limit). When the registry leaves out `Docker-Content-Digest`, or the tag names an
index, the manifest is fetched: for an index, the digest is that of the manifest `pull` would
choose from it (its only entry, or its one linux/amd64 entry).
"""

from __future__ import annotations

from modelyard.errors import RegistryError, RegistryProtocolError, RemoteNotFoundError
from modelyard.reference import Reference
from modelyard.registry.client import INDEX_DOCKER, MANIFEST_ACCEPT, RepositoryClient
from modelyard.registry.formats import UnsupportedManifestError, pick_from_index
from modelyard.registry.options import RegistryOptions
from modelyard.registry.session import error_for
from modelyard.store.image import INDEX_OCI, is_digest


def resolve_remote_digest(ref: Reference, options: RegistryOptions) -> str:
    """The manifest digest `ref` names in its registry now. Raises RemoteNotFoundError (no such tag),
    RegistryUnavailableError, RegistryAuthError or RegistryError like `pull`."""
    if ref.host is None:
        raise RegistryError(f"{ref.short()} names no registry; there is nothing to resolve remotely")
    reference = ref.digest or ref.tag or "latest"
    where = f"{ref.name}{'@' if ref.digest else ':'}{reference}"
    with options.open_session(ref.host) as session:
        repo = RepositoryClient(session, ref.repository)
        response = session.request(
            "HEAD",
            f"/v2/{ref.repository}/manifests/{reference}",
            scope=repo.scope,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        response.close()
        if response.status_code == 404:
            raise RemoteNotFoundError(where, "repository or tag")
        if response.status_code != 200:
            raise error_for(response, f"HEAD manifest {where}")
        digest = response.headers.get("Docker-Content-Digest", "")
        media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        if is_digest(digest) and media_type not in (INDEX_OCI, INDEX_DOCKER) and media_type:
            return digest
        fetched = repo.get_manifest(reference)
    if not fetched.is_index:
        return fetched.digest
    try:
        return pick_from_index(fetched.data)
    except UnsupportedManifestError as exc:
        raise RegistryError(f"{where}: {exc}") from None
    except RegistryProtocolError as exc:
        raise RegistryProtocolError(f"{where}: {exc}") from None
