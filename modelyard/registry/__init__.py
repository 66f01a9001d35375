"""Push and pull models through any OCI registry; log in to one.

    pull.py / push.py / login.py     the operations (what the CLI and the HTTP API call)
    formats.py                       ModelPack ⇄ Ollama ⇄ Docker Model Runner manifests (pure)
    transfer.py                      one blob: chunked streaming upload, resumable verified download
    client.py                        the distribution-spec calls on one repository
    session.py                       HTTP: auth challenges, retries, errors (challenge.py, retry.py: pure)
    credentials.py                   docker config.json and credential helpers
    endpoint.py, locations.py        where a host is reached (pure); which repos hold a blob (mounts)

Why not oras-py's `Registry` for the wire: each call we would need is one that reference/oci.md
and our tests found wanting. `do_request` retries only HTTP 500 and sleeps 3+5+11+29+83 s on a
refused connection; its token auth reuses one token across repositories and reads a Basic realm as
a token server; `get_manifest` returns parsed JSON (the digest can't be checked) and
`upload_manifest` re-serialises and forces the OCI content type; `put_upload` reads the whole file
into memory, `chunked_upload` has no progress or resume, `download_blob` neither verifies nor
resumes; `Container` misparses `localhost/ns/name`. So the same request sequences oras-py sends
(HEAD, POST, PATCH…, PUT ?digest=; GET manifests with an Accept list) are made here with httpx,
which the project already uses, and oras-py remains a compatible peer (tests pull our pushes with
it).
"""

from modelyard.registry.credentials import Credentials
from modelyard.registry.login import login, logout
from modelyard.registry.options import RegistryOptions
from modelyard.registry.pull import PullResult, pull
from modelyard.registry.push import PushFormat, PushResult, push

__all__ = [
    "Credentials",
    "PullResult",
    "PushFormat",
    "PushResult",
    "RegistryOptions",
    "login",
    "logout",
    "pull",
    "push",
]
