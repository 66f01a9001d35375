"""The YAML form of a Modelfile (`Modelfile.yaml`): the same information, for people who prefer YAML.

    from: ./gemma.gguf
    template: |
      {{ .Prompt }}
    system: You are helpful.
    parameters: {temperature: 0.7, stop: ["<end_of_turn>"]}
    messages: [{role: user, content: hi}, {role: assistant, content: hello}]
    adapters: [./lora.gguf]
    license: "MIT text"            # a string or a list of strings
    requires: 0.5.0

It gives the same `Modelfile` value as the Ollama syntax. The shape is checked by pydantic (unknown
keys are errors), the parameters by the PARAMETER table, strictly typed: `temperature: "0.7"` is a
string, not a number. All problems are reported in one ModelfileError, each with its field path and,
where the YAML has one, its line and column. Only PyYAML's safe loader and dumper are used.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError
from pydantic_core import ErrorDetails

from modelyard.builder import modelfile
from modelyard.builder.modelfile import (
    Location,
    Message,
    Modelfile,
    checked_template,
    empty_text_warning,
    parse_requires,
)
from modelyard.builder.params import (
    ParameterValue,
    deprecation_warning,
    describe_value,
    is_deprecated,
    validate_parameter,
)
from modelyard.builder.yaml_nodes import key_text, keys_not_text, repeated_keys
from modelyard.errors import ModelfileError

_YAML_SUFFIXES: Final = (".yaml", ".yml")
_PathPart = str | int
_Path = tuple[_PathPart, ...]


def load_modelfile(text: str, file: str) -> Modelfile:
    """Parse `text` as the YAML form when `file` ends in .yaml or .yml, else as Ollama's syntax."""
    if file.lower().endswith(_YAML_SUFFIXES):
        return parse_yaml(text, file)
    return modelfile.parse(text, file)


# --- the shape, checked by pydantic --------------------------------------------------------------------


def _one_or_many(value: object) -> object:
    # `license: MIT` is the common case; a list is for models with several licenses.
    return [value] if isinstance(value, str) else value


class _MessageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: StrictStr


class _ModelfileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    from_: Annotated[StrictStr, Field(alias="from", min_length=1)]
    template: StrictStr | None = None
    system: StrictStr | None = None
    parameters: dict[StrictStr, object] = Field(default_factory=dict)
    messages: list[_MessageSpec] = Field(default_factory=list)
    adapters: list[Annotated[StrictStr, Field(min_length=1)]] = Field(default_factory=list)
    license: Annotated[list[StrictStr], BeforeValidator(_one_or_many)] = Field(default_factory=list)
    requires: StrictStr | None = None


_TOP_LEVEL_FIELDS: Final = (
    "from",
    "template",
    "system",
    "parameters",
    "messages",
    "adapters",
    "license",
    "requires",
)
_MESSAGE_FIELDS: Final = ("role", "content")


@dataclass(frozen=True)
class _Problem:
    path: _Path
    message: str
    at_key: bool = False  # point at the mapping key (an unknown field) rather than at its value


@dataclass(frozen=True)
class _Located:
    line: int  # 1-based; 0 when the YAML gives no position
    column: int
    problem: _Problem

    def text(self) -> str:
        where = f" (line {self.line}, column {self.column})" if self.line else ""
        return f"{_path_text(self.problem.path)}{where}: {self.problem.message}"


def _path_text(path: _Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "the document"


# --- parsing -------------------------------------------------------------------------------------------


def parse_yaml(text: str, file: str = "Modelfile.yaml") -> Modelfile:
    """Parse the YAML form; raises ModelfileError, and nothing else, for any text that is not one."""
    root, data = _load(text, file)
    if root is None or not isinstance(data, dict):
        raise ModelfileError(
            f"expected a mapping with 'from' and the other Modelfile fields, got {describe_value(data)}",
            file=file,
            line=_line_of(root),
            column=_column_of(root),
        )
    spec, problems = _checked_shape(data)
    problems += _duplicate_keys(root) + [
        _Problem(path, message, at_key=True) for path, message in keys_not_text(root)
    ]
    parameters, parameter_problems = _checked_parameters(data.get("parameters"))
    problems += parameter_problems
    requires = None
    if spec is not None and spec.requires is not None:
        try:
            requires = parse_requires(spec.requires)
        except ModelfileError as error:
            problems.append(_Problem(("requires",), error.message))
    if spec is not None and spec.template is not None:
        try:
            checked_template(spec.template)
        except ModelfileError as error:
            problems.append(_Problem(("template",), error.message))
    if problems or spec is None:
        raise _combined_error(problems, root, file)
    return Modelfile(
        from_=spec.from_,
        parameters=parameters,
        template=spec.template or None,
        system=spec.system or None,
        adapters=tuple(spec.adapters),
        licenses=tuple(text for text in spec.license if text),
        messages=tuple(Message(message.role, message.content) for message in spec.messages),
        requires=requires,
        warnings=_deprecation_warnings(data.get("parameters"), root, file)
        + _empty_text_warnings(spec, data, root, file),
        from_at=_location(root, ("from",), file),
        adapters_at=tuple(_location(root, ("adapters", i), file) for i in range(len(spec.adapters))),
    )


def _empty_text_warnings(
    spec: _ModelfileSpec, data: dict[str, Any], root: yaml.Node, file: str
) -> tuple[str, ...]:
    """Empty texts are not given, as in the Modelfile form (empty_text_warning); where they are."""
    empty: list[tuple[_Path, str]] = []
    if spec.template == "":
        empty.append((("template",), "TEMPLATE"))
    if spec.system == "":
        empty.append((("system",), "SYSTEM"))
    one_license = isinstance(data.get("license"), str)  # `license: ""`, not a list of them
    empty += [
        (("license",) if one_license else ("license", i), "LICENSE")
        for i, t in enumerate(spec.license)
        if not t
    ]
    return tuple(empty_text_warning(keyword, _location(root, path, file)) for path, keyword in empty)


def _location(root: yaml.Node, path: _Path, file: str) -> Location:
    """Where the value at `path` is written, for the build's errors about it."""
    node = _node_at(root, path)
    return (file, _line_of(node), _column_of(node))


def _load(text: str, file: str) -> tuple[yaml.Node | None, object]:
    """The composed node tree (for positions) and the plain data built from it."""
    try:
        return _compose_and_construct(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        raise ModelfileError(
            f"invalid YAML: {_yaml_problem(error)}",
            file=file,
            line=mark.line + 1 if mark else 0,
            column=mark.column + 1 if mark else 0,
        ) from None
    except yaml.YAMLError as error:
        raise ModelfileError(f"invalid YAML: {error}", file=file) from None
    except RecursionError:
        raise ModelfileError("the YAML is nested too deeply to read", file=file) from None
    except (ValueError, LookupError, AttributeError, TypeError) as error:
        # PyYAML's safe constructors raise bare builtins for some malformed tagged scalars
        # (`!!bool maybe` → KeyError, `!!float ""` → IndexError, `!!timestamp x` → AttributeError).
        raise ModelfileError(f"invalid YAML: a tagged value it cannot read ({error!r})", file=file) from None


def _compose_and_construct(text: str) -> tuple[yaml.Node | None, object]:
    # yaml.safe_load, split in two so that the nodes (which know their line and column) are kept.
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def _yaml_problem(error: yaml.MarkedYAMLError) -> str:
    parts = [part for part in (error.context, error.problem) if part]
    return ", ".join(parts) or "cannot be read"


def _checked_shape(data: dict[Any, Any]) -> tuple[_ModelfileSpec | None, list[_Problem]]:
    try:
        return _ModelfileSpec.model_validate(data), []
    except ValidationError as error:
        # A key that is not text is reported from the nodes (keys_not_text), where it was written.
        details = [d for d in error.errors() if d["type"] != "invalid_key" and "[key]" not in d["loc"]]
        return None, [_problem_from_pydantic(detail) for detail in details]
    except RecursionError:  # a self-referencing YAML alias where a message or list was expected
        return None, [_Problem((), "the YAML refers to itself (a recursive alias)")]


def _problem_from_pydantic(detail: ErrorDetails) -> _Problem:
    path: _Path = tuple(detail["loc"])
    value = detail.get("input")
    kind = detail["type"]
    if kind == "extra_forbidden":
        return _Problem(path, _unknown_field_message(path), at_key=True)
    messages = {
        "missing": "required, and missing",
        "string_too_short": "must not be empty",
        "string_type": f"expected a string, got {describe_value(value)}{_quoting_hint(value)}",
        "list_type": f"expected a list, got {describe_value(value)}",
        "dict_type": f"expected a mapping, got {describe_value(value)}",
        "model_type": f"expected a mapping with role and content, got {describe_value(value)}",
        "literal_error": f"must be one of system, user, assistant, got {describe_value(value)}",
    }
    if path == ("license",) and kind == "list_type":
        return _Problem(path, f"expected a string or a list of strings, got {describe_value(value)}")
    return _Problem(path, messages.get(kind, detail["msg"]))


def _quoting_hint(value: object) -> str:
    # `requires: 1.0` or `system: yes` are numbers and bools to YAML; quotes make them strings.
    return " (put it in quotes to make it a string)" if isinstance(value, bool | int | float) else ""


def _unknown_field_message(path: _Path) -> str:
    name = str(path[-1])
    fields = _TOP_LEVEL_FIELDS if len(path) == 1 else _MESSAGE_FIELDS
    message = "unknown field"
    close = difflib.get_close_matches(name.lower(), fields, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return f"{message}; expected one of {', '.join(fields)}"


def _checked_parameters(raw: object) -> tuple[dict[str, ParameterValue], list[_Problem]]:
    """Typed parameters, deprecated ones dropped, and a problem per bad name or value."""
    parameters: dict[str, ParameterValue] = {}
    problems: list[_Problem] = []
    if not isinstance(raw, dict):
        return parameters, problems  # the shape check reports it
    for name, value in raw.items():
        if not isinstance(name, str) or is_deprecated(name):
            continue
        try:
            parameters[name] = validate_parameter(name, value)
        except ModelfileError as error:
            problems.append(_Problem(("parameters", name), error.message))
    return parameters, problems


def _deprecation_warnings(raw: object, root: yaml.Node, file: str) -> tuple[str, ...]:
    if not isinstance(raw, dict):
        return ()
    warnings = []
    for name in raw:
        if isinstance(name, str) and is_deprecated(name):
            node = _node_at(root, ("parameters", name), at_key=True)
            warnings.append(f"{file}:{_line_of(node)}:{_column_of(node)}: {deprecation_warning(name)}")
    return tuple(warnings)


# --- positions -----------------------------------------------------------------------------------------


def _duplicate_keys(root: yaml.Node) -> list[_Problem]:
    """PyYAML keeps the last of two equal keys without a word; a Modelfile.yaml should not."""
    return [_Problem(path, "duplicate key", at_key=True) for path, _, _ in repeated_keys(root)]


def _node_at(root: yaml.Node, path: _Path, *, at_key: bool = False) -> yaml.Node:
    """The node at `path`, or the deepest one on the way there (a missing key points at its mapping)."""
    node = root
    for index, part in enumerate(path):
        child = _child(node, part)
        if child is None:
            break
        key, value = child
        if at_key and index == len(path) - 1 and key is not None:
            return key
        node = value
    return node


def _child(node: yaml.Node, part: _PathPart) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        matches = [(key, value) for key, value in node.value if key_text(key) == str(part)]
        return matches[-1] if matches else None  # the constructor keeps the last of equal keys
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return None, node.value[part]
    return None


def _line_of(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 0


def _column_of(node: yaml.Node | None) -> int:
    return node.start_mark.column + 1 if node is not None else 0


def _combined_error(problems: Sequence[_Problem], root: yaml.Node, file: str) -> ModelfileError:
    located = sorted(
        (_locate(problem, root) for problem in problems),
        key=lambda found: (found.line == 0, found.line, found.column),
    )
    first = located[0]
    if len(located) == 1:
        message = f"{_path_text(first.problem.path)}: {first.problem.message}"
    else:
        message = f"{len(located)} problems:\n" + "\n".join(f"  {found.text()}" for found in located)
    return ModelfileError(message, file=file, line=first.line, column=first.column)


def _locate(problem: _Problem, root: yaml.Node) -> _Located:
    node = _node_at(root, problem.path, at_key=problem.at_key)
    return _Located(_line_of(node), _column_of(node), problem)


# --- formatting ----------------------------------------------------------------------------------------


_UNICODE_LINE_BREAKS: Final = "\x85\u2028\u2029"


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (templates, system prompts) as `|` blocks where YAML allows it."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=_scalar_style(value))


def _scalar_style(value: str) -> str | None:
    # PyYAML writes NEL (U+0085) raw inside single quotes, where it reads back as a folded space;
    # only double quotes escape it. Where a `|` block cannot hold a string, the emitter picks quotes.
    if any(char in value for char in _UNICODE_LINE_BREAKS):
        return '"'
    return "|" if "\n" in value else None


_Dumper.add_representer(str, _represent_str)


def format_yaml(m: Modelfile) -> str:
    """The YAML form of `m`, keys in the documented order; `parse_yaml(format_yaml(m)) == m`."""
    document: dict[str, object] = {"from": m.from_}
    if m.template is not None:
        document["template"] = m.template
    if m.system is not None:
        document["system"] = m.system
    if m.parameters:
        document["parameters"] = {name: _plain(value) for name, value in m.parameters.items()}
    if m.messages:
        document["messages"] = [{"role": message.role, "content": message.content} for message in m.messages]
    if m.adapters:
        document["adapters"] = list(m.adapters)
    if m.licenses:
        document["license"] = m.licenses[0] if len(m.licenses) == 1 else list(m.licenses)
    if m.requires is not None:
        document["requires"] = m.requires
    # No line folding: a long system prompt stays one line, and folding is where YAML round trips go wrong.
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=2**31 - 1)


def _plain(value: ParameterValue) -> object:
    return list(value) if isinstance(value, tuple) else value
