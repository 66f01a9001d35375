"""KubeAI's `Model` (kubeai.org/v1) as a JSON Schema, for validating what `export k8s` writes.

No package ships it, so it is written here from the CRD's published fields (charts/kubeai CRD,
`api/k8s/v1/model_types.go`): the structural schema of `spec`, with the CEL rules that concern an
export (url schemes, the 40-character name, min ≤ max replicas, adapters only with vLLM) written as
JSON Schema or checked by `kubeai_rule_violations`. Unknown fields are refused, as the API server's
pruning would silently drop them.
"""

from __future__ import annotations

from typing import Any

URL_SCHEMES = ("hf://", "pvc://", "ollama://", "s3://", "gs://", "oss://")

MODEL_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "kubeai.org/v1"},
        "kind": {"const": "Model"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "maxLength": 40, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["url", "engine", "features", "scaleDownDelaySeconds", "targetRequests"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "minLength": 1},
                "engine": {"enum": ["OLlama", "VLLM", "FasterWhisper", "Infinity"]},
                "features": {
                    "type": "array",
                    "items": {"enum": ["TextGeneration", "TextEmbedding", "Reranking", "SpeechToText"]},
                },
                "resourceProfile": {"type": "string", "pattern": r"^[a-z0-9-]+:[0-9]+$"},
                "cacheProfile": {"type": "string"},
                "image": {"type": "string"},
                "args": {"type": "array", "items": {"type": "string"}},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "envFrom": {"type": "array", "items": {"type": "object"}},
                "replicas": {"type": "integer"},
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "autoscalingDisabled": {"type": "boolean"},
                "targetRequests": {"type": "integer", "minimum": 1},
                "scaleDownDelaySeconds": {"type": "integer"},
                "loadBalancing": {"type": "object"},
                "adapters": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "url"],
                        "properties": {
                            "name": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9-]+$"},
                            "url": {"type": "string"},
                        },
                    },
                },
                "files": {
                    "type": "array",
                    "maxItems": 10,
                    "items": {
                        "type": "object",
                        "required": ["path", "content"],
                        "properties": {
                            "path": {"type": "string", "maxLength": 1024},
                            "content": {"type": "string", "maxLength": 100000},
                        },
                    },
                },
                "priorityClassName": {"type": "string"},
                "owner": {"type": "string"},
            },
        },
    },
}


def kubeai_rule_violations(model: dict[str, Any]) -> list[str]:
    """The CRD's CEL rules that JSON Schema cannot say."""
    spec = model["spec"]
    problems = []
    if not spec["url"].startswith(URL_SCHEMES):
        problems.append(f"url must start with one of {URL_SCHEMES}")
    if spec["url"].startswith(("gs://", "oss://")) and "cacheProfile" not in spec:
        problems.append("gs:// and oss:// urls need a cacheProfile")
    if "maxReplicas" in spec and spec.get("minReplicas", 0) > spec["maxReplicas"]:
        problems.append("minReplicas should be less than or equal to maxReplicas")
    if "adapters" in spec and spec["engine"] != "VLLM":
        problems.append("adapters only supported with VLLM engine")
    return problems
