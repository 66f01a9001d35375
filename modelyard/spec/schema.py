"""The spec: which models must be ready on this machine, and how (`apiVersion: modelyard/v1`).

    apiVersion: modelyard/v1
    kind: ModelSet
    metadata: {name: team}
    spec:
      interval: 30s                        # resync this often even when nothing changed
      memory: {ram: 12GiB, gpu: auto}      # what this spec's models may use together; auto: the scheduler's
      prune: true                          # true: unload what this spec loaded and no longer lists;
                                           # all: unload every other model too; false: leave them
      suspend: false                       # true: keep serving, change nothing
      selfHeal: true                       # reload a model that crashed or was unloaded outside the spec
      models:
        - name: chat                       # the name clients use
          image: localhost:5000/team/gemma3:270m   # a tag (followed), or name@sha256:… (pinned)
          parallel: 4                      # slots (num_parallel); default: the image's, else auto
          context: 4096                    # tokens per slot (num_ctx); default: the image's, else 4096
          gpuLayers: auto                  # auto | all | N
          keepAlive: forever               # or a duration: unloaded when idle that long, loaded on demand
          pinned: true                     # never evicted for another model
          priority: 10                     # who gets memory first when not all fit
          params: {temperature: 0.2}       # request defaults over the image's PARAMETERs (no reload)
          adapters: [{image: localhost:5000/team/tone:v1, scale: 0.5}]   # LoRA layers of other images
          suspend: false

A folder holds several such documents (files, or `---`-separated documents in one file); they merge
into one ModelSet. Models concatenate (a name defined twice is an error); a setting (memory, prune…)
set in more than one document must agree.

Validation is all or nothing: `parse_spec` either returns a `Spec` or raises SpecValidationError with
every problem, each with its path (`spec.models[1].image`) and, where the YAML says, file and line.
Parsing is pure; `load_spec` reads the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

from modelyard.builder.params import describe_value
from modelyard.builder.yaml_nodes import keys_not_text, repeated_keys
from modelyard.errors import (
    InferenceRequestError,
    InvalidReferenceError,
    SpecIssue,
    SpecSourceError,
    SpecValidationError,
)
from modelyard.reference import parse_reference
from modelyard.runtime.keepalive import format_keep_alive, parse_go_duration, parse_keep_alive
from modelyard.runtime.options import LOAD_OPTION_NAMES, parse_request_options

API_VERSION: Literal["modelyard/v1"] = "modelyard/v1"
KIND: Literal["ModelSet"] = "ModelSet"
SPEC_SUFFIXES = (".yaml", ".yml")
DEFAULT_INTERVAL_S = 30.0
ALL_GPU_LAYERS = 999  # `gpuLayers: all`: more layers than any model has; the offload planner caps it

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


# --- field types ----------------------------------------------------------------------------------


def parse_byte_size(value: object) -> int:
    """`12GiB`, `512Mi` (Kubernetes), `1.5GB`, `8G` (decimal, as Kubernetes reads it) or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 12GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 12GiB, got {type(value).__name__}")
    match = _SIZE.fullmatch(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size; write e.g. 12GiB, 512MiB, 8Gi or 2000000000")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_byte_size(size: int) -> str:
    """Exact, so that it parses back to the same number: `12GiB`, `1536MiB`, or plain bytes."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _budget(value: object) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    return parse_byte_size(value)


def _keep_alive(value: object) -> float:
    try:
        return parse_keep_alive(value)
    except InferenceRequestError as exc:
        raise ValueError(f"{exc}; write a duration such as 10m or 1h, or forever") from None


def _interval(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_go_duration(value.strip())
        except InferenceRequestError as exc:
            raise ValueError(str(exc)) from None
    else:
        raise ValueError("expected a duration such as 30s or 5m")
    if not 1.0 <= seconds <= 86400.0:
        raise ValueError("the interval must be between 1s and 24h")
    return seconds


def _gpu_layers(value: object) -> int | Literal["auto", "all"]:
    if isinstance(value, str) and value.strip().lower() in ("auto", "all"):
        return "auto" if value.strip().lower() == "auto" else "all"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"expected auto, all or a number of layers (0 = CPU only), got {value!r}")


def _prune(value: object) -> bool | Literal["all"]:
    if isinstance(value, bool):
        return value
    if value == "all":
        return "all"
    raise ValueError(f"expected true, false or all, got {value!r}")


KeepAlive = Annotated[
    float,
    BeforeValidator(_keep_alive),
    PlainSerializer(format_keep_alive, return_type=str),
]
Budget = Annotated[
    int | None,
    BeforeValidator(_budget),
    PlainSerializer(lambda v: "auto" if v is None else format_byte_size(v), return_type=str),
]
Interval = Annotated[float, BeforeValidator(_interval), PlainSerializer(format_keep_alive, return_type=str)]
GpuLayers = Annotated[int | Literal["auto", "all"], BeforeValidator(_gpu_layers)]
Prune = Annotated[bool | Literal["all"], BeforeValidator(_prune)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, validate_default=True
    )


def _check_reference(value: str) -> str:
    try:
        parse_reference(value)
    except InvalidReferenceError as exc:
        raise ValueError(exc.reason) from None
    return value.strip()


class AdapterSpec(_Strict):
    """A LoRA adapter: the adapter layers of another image, applied with `scale`."""

    image: str
    scale: float = Field(default=1.0, ge=0.0, le=10.0)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return _check_reference(value)


class ModelSpec(_Strict):
    name: str
    image: str
    parallel: int | None = Field(default=None, ge=1, le=256)
    context: int | None = Field(default=None, ge=16, le=10_000_000)
    gpu_layers: GpuLayers = "auto"
    keep_alive: KeepAlive = math.inf
    pinned: bool = False
    priority: int = 0
    params: dict[str, Any] = Field(default_factory=dict)
    adapters: tuple[AdapterSpec, ...] = ()
    suspend: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SERVED_NAME.fullmatch(value):
            raise ValueError(
                "a model name is 1 to 128 letters, digits and . _ : / - and starts with a letter or digit"
            )
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return _check_reference(value)

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        load = sorted(set(value) & LOAD_OPTION_NAMES)
        if load:
            fields = {"num_ctx": "context", "num_parallel": "parallel", "num_gpu": "gpuLayers"}
            hints = [f"{n} (use {fields[n]})" if n in fields else n for n in load]
            raise ValueError(f"load options do not belong in params: {', '.join(hints)}")
        try:
            parse_request_options(value)
        except InferenceRequestError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def reference_texts(self) -> tuple[str, ...]:
        """Every image this model needs: its own, then its adapters'."""
        return (self.image, *(a.image for a in self.adapters))

    def load_options(self) -> dict[str, int]:
        """The options that decide how the runner is loaded (a change reloads it)."""
        options: dict[str, int] = {}
        if self.context is not None:
            options["num_ctx"] = self.context
        if self.parallel is not None:
            options["num_parallel"] = self.parallel
        if self.gpu_layers != "auto":
            options["num_gpu"] = ALL_GPU_LAYERS if self.gpu_layers == "all" else int(self.gpu_layers)
        return options


class MemorySpec(_Strict):
    ram: Budget = None
    gpu: Budget = None

    @property
    def total(self) -> int | None:
        """The budget for this spec's models, RAM and GPU memory together; None: the scheduler's."""
        if self.ram is None:
            return None
        return self.ram + (self.gpu or 0)


class ModelSetBody(_Strict):
    interval: Interval = DEFAULT_INTERVAL_S
    memory: MemorySpec = MemorySpec()
    prune: Prune = True
    suspend: bool = False
    self_heal: bool = True
    models: tuple[ModelSpec, ...] = ()


class Metadata(_Strict):
    name: str = Field(default="default", pattern=r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
    labels: dict[str, str] = Field(default_factory=dict)


class ModelSetDocument(_Strict):
    api_version: Literal["modelyard/v1"]
    kind: Literal["ModelSet"]
    metadata: Metadata = Metadata()
    spec: ModelSetBody = ModelSetBody()


# --- the merged spec ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecDocument:
    """One YAML file's text, as read from a file, a folder or a git commit."""

    path: str  # for messages: relative to the source's root
    text: str


@dataclass(frozen=True)
class Spec:
    """The merged, valid ModelSet. `digest` identifies its content (the reconciler counts generations)."""

    name: str
    body: ModelSetBody
    labels: Mapping[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        return self.body.models

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.body.models if m.name == name), None)

    def to_document(self) -> dict[str, Any]:
        """One ModelSet document equal to the merge (what the state file and a ConfigMap hold)."""
        document = ModelSetDocument(
            api_version=API_VERSION,
            kind=KIND,
            metadata=Metadata(name=self.name, labels=dict(self.labels)),
            spec=self.body,
        )
        return document.model_dump(mode="json", by_alias=True, exclude_defaults=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_document(), sort_keys=False)

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def model_key(spec: Spec, model: ModelSpec) -> str:
    """What a permanent failure of `model` waits to see change: its entry and the memory budget."""
    data = {"model": model.model_dump(mode="json"), "memory": spec.body.memory.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# PyYAML's safe constructors raise these for some well-formed but unreadable values (`=` is the
# `!!value` tag, which has no constructor; `!!bool maybe` a KeyError; deep nesting a RecursionError).
_CONSTRUCTOR_ERRORS = (ValueError, LookupError, AttributeError, TypeError, RecursionError)


def _problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    return getattr(exc, "problem", None) or str(exc)


def _yaml_error_at(exc: BaseException, text: str) -> tuple[int, str]:
    """The 1-based line of a YAML error (0: unknown) and what to say. PyYAML finds an opening never
    closed at the end of the file, a line past the last one of a file that ends in a newline (a
    spec review: a one-line file's error was at its line 2): it is said at the opening, which PyYAML
    gives as its context, or else at the file's last line."""
    problem = _problem(exc)
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return 0, problem
    if "<stream end>" not in problem and "end of stream" not in problem:
        return mark.line + 1, problem
    context, opened = getattr(exc, "context", None) or "", getattr(exc, "context_mark", None)
    if opened is not None and (opened.line, opened.column) < (mark.line, mark.column):
        what = context.removeprefix("while parsing a ").removeprefix("while scanning a ")
        return opened.line + 1, f"the file ends before the {what} opened here is closed"
    return max(len(text.rstrip().splitlines()), 1), f"the file ends in the middle of a value ({problem})"


def _empty_document(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null" and not node.value


def parse_spec(documents: Sequence[SpecDocument]) -> Spec:
    """Validate and merge every document, or raise SpecValidationError listing every problem."""
    issues: list[SpecIssue] = []
    parsed: list[tuple[SpecDocument, ModelSetDocument, yaml.Node]] = []
    partial: list[tuple[SpecDocument, ModelSetDocument, yaml.Node]] = []  # settings of invalid ones
    names: list[tuple[str, str, int, int]] = []  # every model name given: (name, file, index, line)
    for document in documents:
        try:
            nodes = list(yaml.compose_all(document.text, Loader=yaml.SafeLoader))
        except (yaml.YAMLError, RecursionError) as exc:
            line, problem = _yaml_error_at(exc, document.text)
            issues.append(SpecIssue("", f"not valid YAML: {problem}", document.path, line))
            continue
        for node in nodes:
            if node is None or _empty_document(node):  # `---` with nothing after it, or only comments
                continue
            try:
                data = yaml.safe_load(yaml.serialize(node))
            except (yaml.YAMLError, *_CONSTRUCTOR_ERRORS) as exc:
                line = node.start_mark.line + 1
                issues.append(SpecIssue("", f"not valid YAML: {_problem(exc)}", document.path, line))
                continue
            if data is None:
                continue
            if not isinstance(data, dict):
                line = node.start_mark.line + 1
                issues.append(
                    SpecIssue("", "a document must be a mapping (apiVersion, kind…)", document.path, line)
                )
                continue
            issues += _repeated_keys(node, document.path) + _keys_not_text(node, document.path)
            # Read from every document, valid or not: a name given twice is reported beside the
            # document's other problems, not once they are fixed.
            names += _model_names(data, node, document.path)
            try:
                parsed.append((document, ModelSetDocument.model_validate(data), node))
            except ValidationError as exc:
                issues.extend(_issues(exc, node, document.path))
                settings_only = _without_models(data)
                if settings_only is not None:  # its spec-level settings still meet the others'
                    partial.append((document, settings_only, node))
    issues += _repeated_names(names)
    if not parsed and not issues:
        issues.append(SpecIssue("", "no ModelSet document found", ", ".join(d.path for d in documents)))
    if issues:
        # The documents that did validate still merge, and the settings of those whose models did
        # not, so that their conflicts (a setting set two ways) come in the same report, not in the
        # next one.
        try:
            _merge([*parsed, *partial])
        except SpecValidationError as conflicts:
            issues += conflicts.issues
        raise SpecValidationError(sorted(issues, key=lambda i: (i.file, i.line)))
    return _merge(parsed)


def load_spec(path: Path | str) -> Spec:
    """A file, or a folder of `*.yaml`/`*.yml` files (recursively, hidden ones skipped), merged."""
    return parse_spec(read_documents(Path(path)))


# A spec of a few hundred models is tens of KB; megabytes are a mistake (a file of something
# else in the folder), and cost seconds of CPU to parse at every change.
MAX_SPEC_BYTES = 4 << 20


def read_documents(path: Path, *, within: Path | None = None, watched: bool = False) -> list[SpecDocument]:
    """The spec documents of a file or folder. `within`: every file read must resolve inside it
    (no symlink out of a git clone). `watched`: an empty file is one being written (a source error,
    read again at the next poll), not one that merges as nothing."""
    if within is not None:
        _check_within(path, within)
    if path.is_dir():
        files = spec_files(path)
        if not files:
            raise SpecSourceError(str(path), "no *.yaml or *.yml files in this folder")
        root = path
    elif path.is_file():
        files, root = [path], path.parent
    elif path.exists():  # a device or a pipe (`-f /dev/null`): not a spec file (a CLI review)
        raise SpecSourceError(
            str(path), "not a file or a folder; give a spec file (YAML) or a folder of them"
        )
    else:
        raise SpecSourceError(str(path), "no such file or folder")
    documents = []
    total = 0
    for file in files:
        if within is not None:
            _check_within(file, within)
        try:
            total += file.stat().st_size
            if total > MAX_SPEC_BYTES:
                raise SpecSourceError(
                    str(path),
                    f"the spec files hold over {MAX_SPEC_BYTES >> 20} MiB; a spec takes at most that",
                )
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecSourceError(str(file), f"cannot read it: {exc}") from None
        if watched and not text.strip():
            # A file being rewritten in place is empty a moment: merged as nothing, its models left
            # the spec and were unloaded (a GitOps review). Read again at the next poll.
            raise SpecSourceError(
                str(file), "is empty (being written?); to drop its models, delete the file or empty its list"
            )
        documents.append(SpecDocument(file.relative_to(root).as_posix(), text))
    return documents


def _check_within(path: Path, root: Path) -> None:
    if not path.resolve().is_relative_to(root.resolve()):
        raise SpecSourceError(str(path), "a symbolic link out of the repository; it is not read")


def spec_files(folder: Path) -> list[Path]:
    """The spec files under `folder`, in a stable order; hidden files and folders (.git) are skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in SPEC_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


# --- merging --------------------------------------------------------------------------------------

_SETTINGS = ("interval", "memory", "prune", "suspend", "self_heal")


def _without_models(data: dict[str, Any]) -> ModelSetDocument | None:
    """A document that did not validate, without its models: its settings, if they validate."""
    spec = data.get("spec")
    if not isinstance(spec, dict) or "models" not in spec:
        return None
    try:
        return ModelSetDocument.model_validate(
            {**data, "spec": {k: v for k, v in spec.items() if k != "models"}}
        )
    except ValidationError:
        return None


def _merge(parsed: Iterable[tuple[SpecDocument, ModelSetDocument, yaml.Node]]) -> Spec:
    issues: list[SpecIssue] = []
    settings: dict[str, tuple[Any, str, int]] = {}  # field -> (value, file, line) of the first setter
    name: tuple[str, str, int] | None = None
    labels: dict[str, str] = {}
    models: list[ModelSpec] = []  # names are unique: parse_spec checked them (_repeated_names)
    files: list[str] = []
    for document, value, node in parsed:
        files.append(document.path)
        if "name" in value.metadata.model_fields_set:
            line = _line(node, ("metadata", "name"))
            if name is not None and name[0] != value.metadata.name:
                issues.append(
                    SpecIssue(
                        "metadata.name",
                        f"{value.metadata.name!r} differs from {name[0]!r} at {name[1]}:{name[2]}; "
                        "the documents of one source form one ModelSet",
                        document.path,
                        line,
                    )
                )
            elif name is None:
                name = (value.metadata.name, document.path, line)
        labels.update(value.metadata.labels)
        for key in _SETTINGS:
            if key not in value.spec.model_fields_set:
                continue
            alias = to_camel(key)
            setting = getattr(value.spec, key)
            line = _line(node, ("spec", alias))
            first = settings.get(key)
            if first is not None and first[0] != setting:
                issues.append(
                    SpecIssue(
                        f"spec.{alias}",
                        f"set differently at {first[1]}:{first[2]}; set it in one document only",
                        document.path,
                        line,
                    )
                )
            elif first is None:
                settings[key] = (setting, document.path, line)
        models += value.spec.models
    if issues:
        raise SpecValidationError(issues)
    body = ModelSetBody(**{key: value for key, (value, _, _) in settings.items()}, models=tuple(models))
    return Spec(name=name[0] if name else "default", body=body, labels=labels, files=tuple(files))


def _model_names(data: dict[str, Any], node: yaml.Node, file: str) -> list[tuple[str, str, int, int]]:
    spec = data.get("spec")
    models = spec.get("models") if isinstance(spec, dict) else None
    if not isinstance(models, list):
        return []
    return [
        (model["name"], file, index, _line(node, ("spec", "models", index, "name")))
        for index, model in enumerate(models)
        if isinstance(model, dict) and isinstance(model.get("name"), str)
    ]


def _repeated_names(names: Iterable[tuple[str, str, int, int]]) -> list[SpecIssue]:
    """Model names given more than once, across every document (pure)."""
    issues: list[SpecIssue] = []
    first: dict[str, tuple[str, int]] = {}
    for name, file, index, line in names:
        if name in first:
            where = first[name]
            issues.append(
                SpecIssue(
                    f"spec.models[{index}].name",
                    f"{name!r} is already defined at {where[0]}:{where[1]}; names must be unique",
                    file,
                    line,
                )
            )
        else:
            first[name] = (file, line)
    return issues


def _repeated_keys(node: yaml.Node, file: str) -> list[SpecIssue]:
    """Keys given twice in one mapping: YAML 1.2 forbids them, and PyYAML would keep the last one
    without a word, which is almost always a mistake (an edit that left the old line in)."""
    return [
        SpecIssue(
            format_path(path),
            f"given twice (first at line {first.start_mark.line + 1}); give it once",
            file,
            repeat.start_mark.line + 1,
        )
        for path, first, repeat in repeated_keys(node)
    ]


def _keys_not_text(node: yaml.Node, file: str) -> list[SpecIssue]:
    return [
        SpecIssue(format_path(path), message, file, _line(node, path))
        for path, message in keys_not_text(node)
    ]


# --- error locations ------------------------------------------------------------------------------


def _issues(error: ValidationError, node: yaml.Node, file: str) -> list[SpecIssue]:
    issues = []
    for detail in error.errors(include_url=False):
        if detail["type"] == "invalid_key":
            continue  # a key that is not text: reported from the nodes (_keys_not_text), where it is
        location = tuple(detail["loc"])
        message = str(detail["msg"]).removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            message = _unknown_field_message(location)
        elif detail["type"] == "literal_error" and location[:1] in (("apiVersion",), ("kind",)):
            message = f"must be {API_VERSION if location[0] == 'apiVersion' else KIND}"
        elif detail["type"] == "string_pattern_mismatch" and location == ("metadata", "name"):
            # Not pydantic's regular expression (a spec review): what a name may hold.
            message = (
                f"{detail.get('input')!r} is not a Kubernetes name: lowercase letters, digits, '-' and "
                "'.', beginning and ending with a letter or digit, at most 63 characters"
            )
        elif detail["type"] in ("tuple_type", "list_type"):  # our tuples are YAML lists
            message = f"expected a list, got {_yaml_kind(detail.get('input'))}"
        else:
            message = _plain(detail) or message
        issues.append(SpecIssue(format_path(location), message, file, _line(node, location)))
    return issues


# pydantic's wording of common problems, as the rest of our messages say them.
_PLAIN: dict[str, str] = {
    "missing": "is required",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "string_too_short": "must have at least {min_length} character(s)",
    "too_short": "must have at least {min_length} item(s)",
}
_EXPECTED: dict[str, str] = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


def _plain(detail: Mapping[str, Any]) -> str | None:
    kind = detail["type"]
    if kind in _PLAIN:
        try:
            return _PLAIN[kind].format(**(detail.get("ctx") or {}))
        except KeyError:
            return None
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_yaml_kind(detail.get('input'))}"
    return None


def _yaml_kind(value: object) -> str:
    return ("the string " if isinstance(value, str) else "") + describe_value(value)


def _unknown_field_message(location: tuple[Any, ...]) -> str:
    import difflib

    known: dict[tuple[str, ...], type[BaseModel]] = {
        (): ModelSetDocument,
        ("metadata",): Metadata,
        ("spec",): ModelSetBody,
        ("spec", "memory"): MemorySpec,
        ("spec", "models"): ModelSpec,
        ("spec", "models", "adapters"): AdapterSpec,
    }
    parent = tuple(p for p in location[:-1] if isinstance(p, str))
    model = known.get(parent)
    fields = [f.alias or n for n, f in model.model_fields.items()] if model else []
    close = difflib.get_close_matches(str(location[-1]), fields, n=1)
    hint = (
        f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(fields)}" if fields else ""
    )
    return f"unknown field{hint}"


def format_path(location: Sequence[Any]) -> str:
    """`("spec", "models", 1, "image")` → `spec.models[1].image`."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _line(node: yaml.Node, location: Sequence[Any]) -> int:
    """The 1-based line of the deepest node `location` reaches (the key, for a mapping entry)."""
    line = node.start_mark.line + 1
    for part in location:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            found = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
