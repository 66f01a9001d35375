"""Declarative models: a YAML spec of the models that must be ready, kept so by a reconciler.

schema.py       the ModelSet document (modelyard/v1): validation with every error by path and line
plan.py         what to do (pure): pull, load, reload, swap, update in place, unload
reconciler.py   the level-triggered loop over an `Effects` protocol, backoff, conditions, prune
status.py       per-model conditions Ready / Progressing / Degraded (pure), status as text
state.py        what survives a restart, under $MODELYARD_HOME
host.py         the effects on this machine: store, registries, scheduler
sources.py      a watched file or folder; a git repository polled for new commits
kubernetes.py   the same spec as KubeAI Models or Deployments
daemon.py       entry points for the CLI and the HTTP server
"""

from modelyard.spec.daemon import SpecDaemon, export_for, plan_for, state_path
from modelyard.spec.kubernetes import ExportOptions, export_kubernetes, export_yaml
from modelyard.spec.plan import Plan, format_plan, plan
from modelyard.spec.reconciler import Reconciler, ReconcilerSettings, SpecSnapshot
from modelyard.spec.schema import Spec, SpecDocument, load_spec, parse_spec, read_documents
from modelyard.spec.sources import FileSource, GitSource, open_source
from modelyard.spec.status import format_status

__all__ = [
    "ExportOptions",
    "FileSource",
    "GitSource",
    "Plan",
    "Reconciler",
    "ReconcilerSettings",
    "Spec",
    "SpecDaemon",
    "SpecDocument",
    "SpecSnapshot",
    "export_for",
    "export_kubernetes",
    "export_yaml",
    "format_plan",
    "format_status",
    "load_spec",
    "open_source",
    "parse_spec",
    "plan",
    "plan_for",
    "read_documents",
    "state_path",
]
