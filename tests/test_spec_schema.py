"""The ModelSet schema: valid documents, every error by path and line, folders that merge."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from spec_fakes import HEADER, spec_text

from modelyard.errors import SpecSourceError, SpecValidationError
from modelyard.spec.schema import (
    ALL_GPU_LAYERS,
    SpecDocument,
    format_byte_size,
    load_spec,
    parse_byte_size,
    parse_spec,
)

FULL = (
    """
memory: {ram: 12GiB, gpu: auto}
prune: true
suspend: false
models:
  - name: chat
    image: localhost:5000/team/gemma3:270m
    parallel: 4
    context: 4096
    gpuLayers: auto
    keepAlive: forever
    pinned: true
    priority: 10
    params: {temperature: 0.2}
  - name: embed
    image: team/embed@sha256:"""
    + "a" * 64
    + """
    gpuLayers: all
    keepAlive: 10m
    adapters: [{image: localhost:5000/team/tone:v1, scale: 0.5}]
"""
)


def test_the_issue_example_parses_with_defaults_filled_in() -> None:
    spec = parse_spec([SpecDocument("team.yaml", spec_text(FULL))])
    assert spec.name == "team" and spec.body.memory.ram == 12 * 2**30 and spec.body.memory.gpu is None
    assert spec.body.prune is True and spec.body.self_heal is True and spec.body.interval == 30.0
    chat, embed = spec.models
    assert chat.load_options() == {"num_ctx": 4096, "num_parallel": 4}
    assert (chat.keep_alive, chat.pinned, chat.priority, chat.params) == (
        math.inf,
        True,
        10,
        {"temperature": 0.2},
    )
    assert embed.load_options() == {"num_gpu": ALL_GPU_LAYERS} and embed.keep_alive == 600
    assert embed.reference_texts == (embed.image, "localhost:5000/team/tone:v1")


def test_the_merged_document_round_trips_to_the_same_digest() -> None:
    spec = parse_spec([SpecDocument("team.yaml", spec_text(FULL))])
    again = parse_spec([SpecDocument("saved", spec.to_yaml())])
    assert again == spec.__class__(spec.name, spec.body, spec.labels, ("saved",))
    assert again.digest == spec.digest


@pytest.mark.parametrize(
    ("body", "path", "line", "message"),
    [
        pytest.param(
            "models: [{name: a, image: 'bad ref'}]", "spec.models[0].image", 5, "whitespace", id="bad-image"
        ),
        pytest.param(
            "models: [{name: a, image: x, paralel: 2}]",
            "spec.models[0].paralel",
            5,
            "did you mean 'parallel'",
            id="typo-field",
        ),
        pytest.param(
            "models: [{name: a, image: x, gpuLayers: some}]",
            "spec.models[0].gpuLayers",
            5,
            "auto, all",
            id="gpu-layers",
        ),
        pytest.param(
            "models: [{name: a, image: x, keepAlive: 10 minutes}]",
            "spec.models[0].keepAlive",
            5,
            "duration",
            id="keep-alive",
        ),
        pytest.param(
            "models: [{name: a, image: x, params: {num_ctx: 9}}]",
            "spec.models[0].params",
            5,
            "use context",
            id="load-option-in-params",
        ),
        pytest.param(
            "models: [{name: a, image: x, params: {temprature: 1}}]",
            "spec.models[0].params",
            5,
            "did you mean 'temperature'",
            id="unknown-param",
        ),
        pytest.param(
            "models: [{name: a, image: x, parallel: 0}]",
            "spec.models[0].parallel",
            5,
            "must be at least 1",
            id="parallel-zero",
        ),
        pytest.param(
            "models: [{name: 'a b', image: x}]", "spec.models[0].name", 5, "letters, digits", id="name"
        ),
        pytest.param("memory: {ram: lots}", "spec.memory.ram", 5, "not a size", id="budget"),
        pytest.param("prune: sometimes", "spec.prune", 5, "true, false or all", id="prune"),
        pytest.param("interval: 0s", "spec.interval", 5, "between 1s and 24h", id="interval"),
        pytest.param("models: [{image: x}]", "spec.models[0].name", 5, "is required", id="missing-name"),
        pytest.param(
            "models: [{name: a, image: x, context: 8}]",
            "spec.models[0].context",
            5,
            "must be at least 16",
            id="plain-minimum",
        ),
        pytest.param(
            "models: [{name: a, image: x, parallel: many}]",
            "spec.models[0].parallel",
            5,
            "expected an integer, got the string 'many'",
            id="plain-type",
        ),
        pytest.param(
            "models: {a: 1}", "spec.models", 5, "expected a list, got a mapping", id="models-mapping"
        ),
        pytest.param(
            "models: [{name: a, image: x, adapters: y}]",
            "spec.models[0].adapters",
            5,
            "expected a list, got the string 'y'",
            id="adapters-string",
        ),
    ],
)
def test_an_invalid_field_is_reported_by_path_and_line(body: str, path: str, line: int, message: str) -> None:
    with pytest.raises(SpecValidationError) as error:
        parse_spec([SpecDocument("m.yaml", spec_text(body))])
    issue = error.value.issues[0]
    assert (issue.path, issue.file, issue.line) == (path, "m.yaml", line)
    assert message in issue.message, issue.message


def test_every_error_of_a_document_is_listed_at_once() -> None:
    text = spec_text(
        """
        models:
          - name: ok
            image: x
          - name: bad
            image: "not ok"
            context: -1
          - name: worse
            imag: y
        """
    )
    with pytest.raises(SpecValidationError) as error:
        parse_spec([SpecDocument("m.yaml", text)])
    found = {(i.path, i.line) for i in error.value.issues}
    assert found == {
        ("spec.models[1].image", 9),
        ("spec.models[1].context", 10),
        ("spec.models[2].image", 11),
        ("spec.models[2].imag", 12),
    }
    assert "m.yaml:9: spec.models[1].image" in str(error.value)


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        pytest.param(
            "apiVersion: modelyard/v2\nkind: ModelSet\n", "apiVersion", "modelyard/v1", id="api-version"
        ),
        pytest.param("apiVersion: modelyard/v1\nkind: Model\n", "kind", "ModelSet", id="kind"),
        pytest.param("- a\n- b\n", "", "mapping", id="not-a-mapping"),
        pytest.param("spec: [unclosed\n", "", "not valid YAML", id="yaml-syntax"),
        # Well-formed, but no safe constructor reads it (schemathesis found these as a 500).
        pytest.param("=\n", "", "not valid YAML", id="yaml-value-tag"),
        pytest.param("spec: !!bool maybe\n", "", "not valid YAML", id="yaml-bad-tagged-scalar"),
        pytest.param("[" * 2000 + "]" * 2000, "", "not valid YAML", id="yaml-nested-too-deeply"),
        pytest.param("", "", "no ModelSet document", id="empty"),
    ],
)
def test_documents_that_are_not_modelsets(text: str, path: str, message: str) -> None:
    with pytest.raises(SpecValidationError) as error:
        parse_spec([SpecDocument("m.yaml", text)])
    assert error.value.issues[0].path == path and message in error.value.issues[0].message


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        pytest.param("a: b: c\n", 1, "mapping values are not allowed here", id="mid-file"),
        pytest.param(
            "apiVersion: modelyard/v1\nspec:\n  models: [{name: a, image: x}\n",
            3,
            "the file ends before the flow sequence opened here is closed",
            id="unclosed-sequence-at-its-opening",
        ),
        pytest.param(
            'spec:\n  models:\n    - {name: a, image: "x}\n\n',
            3,
            "the file ends before the quoted scalar opened here is closed",
            id="unclosed-quote-at-its-opening",
        ),
        pytest.param(
            "spec: {models: [\n", 1, "the file ends in the middle of a value", id="one-line-at-its-line"
        ),
    ],
)
def test_a_yaml_error_at_the_end_of_the_file_is_said_where_it_began(
    text: str, line: int, message: str
) -> None:
    """A spec review: an opening never closed was reported where PyYAML found the end of the file,
    a line past the last (line 2 of a one-line file)."""
    with pytest.raises(SpecValidationError) as error:
        parse_spec([SpecDocument("m.yaml", text)])
    issue = error.value.issues[0]
    assert (issue.line, message in issue.message) == (line, True), issue


def test_a_folder_merges_and_duplicate_names_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(spec_text("memory: {ram: 8GiB}\nmodels: [{name: chat, image: x}]"))
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "b.yml").write_text(spec_text("models: [{name: code, image: y}]"))
    (tmp_path / ".hidden.yaml").write_text("not: [valid")
    (tmp_path / "README.md").write_text("ignored")
    spec = load_spec(tmp_path)
    assert [m.name for m in spec.models] == ["chat", "code"] and spec.body.memory.ram == 8 * 2**30
    assert spec.files == ("a.yaml", "nested/b.yml")

    (tmp_path / "c.yaml").write_text(spec_text("memory: {ram: 4GiB}\nmodels: [{name: chat, image: z}]"))
    with pytest.raises(SpecValidationError) as error:
        load_spec(tmp_path)
    messages = {(i.file, i.path): i.message for i in error.value.issues}
    assert "already defined at a.yaml:6" in messages[("c.yaml", "spec.models[0].name")]
    assert "set differently at a.yaml:5" in messages[("c.yaml", "spec.memory")]


def test_conflicts_come_in_the_same_report_as_a_bad_field() -> None:
    documents = [
        SpecDocument("a.yaml", spec_text("models: [{name: chat, image: x}]")),
        SpecDocument("b.yaml", spec_text("models: [{name: chat, image: y}]")),
        SpecDocument("c.yaml", spec_text("models: [{name: code, image: z, parallel: many}]")),
    ]
    with pytest.raises(SpecValidationError) as error:
        parse_spec(documents)
    where = {(i.file, i.path) for i in error.value.issues}
    assert ("b.yaml", "spec.models[0].name") in where, "the duplicate name"
    assert any(file == "c.yaml" and "parallel" in path for file, path in where), "the bad field"


def test_a_setting_in_a_document_whose_models_are_wrong_still_meets_the_others() -> None:
    """Found: a prune set two ways was reported only once a typo in one of the files was fixed."""
    documents = [
        SpecDocument("a.yaml", spec_text("prune: false\nmodels: [{name: chat, image: x}]")),
        SpecDocument("b.yaml", spec_text("prune: true\nmodels: [{name: code, image: y, paralel: 2}]")),
    ]
    with pytest.raises(SpecValidationError) as error:
        parse_spec(documents)
    where = {(i.file, i.path): i.message for i in error.value.issues}
    assert any("paralel" in path for _, path in where), "the typo"
    assert "set differently at a.yaml" in where[("b.yaml", "spec.prune")], "and the conflict, at once"


def test_a_name_given_twice_in_a_document_with_other_errors_is_in_the_same_report() -> None:
    text = spec_text("models: [{name: a, image: x, contxt: 1}, {name: a, image: y}]")
    with pytest.raises(SpecValidationError) as error:
        parse_spec([SpecDocument("m.yaml", text)])
    where = {i.path: i.message for i in error.value.issues}
    assert "contxt" in " ".join(where) and "already defined at m.yaml:5" in where["spec.models[1].name"]


def test_a_key_given_twice_is_an_error_at_its_line() -> None:
    text = spec_text(
        """
        models:
          - name: a
            image: x
            context: 4096
            context: 8192
        """
    )
    with pytest.raises(SpecValidationError) as error:
        parse_spec([SpecDocument("m.yaml", text)])
    [issue] = error.value.issues
    assert (issue.path, issue.line) == ("spec.models[0].context", 9)
    assert "given twice (first at line 8)" in issue.message


def test_a_key_yaml_reads_as_a_boolean_is_an_error_at_its_line() -> None:
    """`on:` is true to YAML 1.1: said so at the key, not as pydantic's "[1]: Keys should be strings"
    (a build review)."""
    text = spec_text(
        """
        models:
          - name: a
            image: x
            on: 1
        """
    )
    with pytest.raises(SpecValidationError) as error:
        parse_spec([SpecDocument("m.yaml", text)])
    [issue] = error.value.issues
    assert (issue.path, issue.line) == ("spec.models[0].on", 8)
    assert (
        issue.message == 'YAML reads the key on as true (a boolean), not as a name: put it in quotes ("on")'
    )


def test_empty_documents_are_skipped() -> None:
    """A trailing `---`, or a file of comments after one (a model switched off), as safe_load_all
    reads them."""
    documents = [
        SpecDocument("a.yaml", "---\n" + spec_text("models: [{name: a, image: x}]") + "---\n"),
        SpecDocument("off.yaml", "---\n# disabled for now\n"),
    ]
    assert [m.name for m in parse_spec(documents).models] == ["a"]


def test_several_documents_in_one_file_merge() -> None:
    text = (
        spec_text("models: [{name: a, image: x}]")
        + "---\n"
        + HEADER
        + "spec: {models: [{name: b, image: y}]}\n"
    )
    assert [m.name for m in parse_spec([SpecDocument("m.yaml", text)]).models] == ["a", "b"]


def test_a_missing_source_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SpecSourceError, match="no such file"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecSourceError, match=r"no \*\.yaml"):
        load_spec(tmp_path)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        pytest.param("12GiB", 12 * 2**30, id="gib"),
        pytest.param("512Mi", 512 * 2**20, id="kubernetes-mi"),
        pytest.param("1.5GB", 1_500_000_000, id="decimal"),
        pytest.param("8G", 8_000_000_000, id="kubernetes-g"),
        pytest.param("2048", 2048, id="bytes"),
    ],
)
def test_byte_sizes(text: str, size: int) -> None:
    assert parse_byte_size(text) == size


@given(st.integers(min_value=0, max_value=2**50))
def test_byte_sizes_format_exactly(size: int) -> None:
    assert parse_byte_size(format_byte_size(size)) == size


def test_the_gitops_sample_is_a_valid_spec() -> None:
    sample = Path(__file__).resolve().parent.parent / "samples" / "gitops" / "specs"
    spec = load_spec(sample)
    assert spec.name == "team" and [m.name for m in spec.models] == ["chat", "pirate"]
    assert spec.body.memory.ram == 4 * 2**30 and spec.models[1].keep_alive == 600


@pytest.mark.parametrize("name", ["Chat_Models", "-a", "a" * 64, ""])
def test_a_bad_metadata_name_says_what_a_name_may_hold(name: str) -> None:
    """A spec review: the message was pydantic's 'String should match pattern …'."""
    text = f"apiVersion: modelyard/v1\nkind: ModelSet\nmetadata: {{name: '{name}'}}\nspec: {{models: []}}\n"
    with pytest.raises(SpecValidationError) as error:
        parse_spec([SpecDocument("m.yaml", text)])
    issue = error.value.issues[0]
    assert issue.path == "metadata.name" and issue.line == 3
    assert f"{name!r} is not a Kubernetes name: lowercase letters" in issue.message


@pytest.mark.parametrize(
    ("path", "message"),
    [
        # A device exists, and is not a spec (a CLI review: `apply -f /dev/null` said "no such file").
        pytest.param("/dev/null", "not a file or a folder", id="device"),
        pytest.param("/no/such/spec.yaml", "no such file or folder", id="missing"),
    ],
)
def test_a_spec_path_that_is_no_file_says_what_it_is(path: str, message: str) -> None:
    with pytest.raises(SpecSourceError, match=message):
        load_spec(path)


def test_a_spec_of_megabytes_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """A GitOps review: a 1.4 MB file dropped in a folder source took seconds of CPU to parse."""
    from modelyard.spec.schema import MAX_SPEC_BYTES, read_documents

    (tmp_path / "a.yaml").write_text("kind: ModelSet\n")
    (tmp_path / "b.yaml").write_text("# " + "x" * MAX_SPEC_BYTES + "\n")
    with pytest.raises(SpecSourceError, match="over 4 MiB"):
        read_documents(tmp_path)
