"""Hypothesis strategies for Go templates: random templates drawn from the grammar of text/template
(actions, pipelines, functions, if/range/with, variables in scope, trimming, comments) and random
JSON-like data to run them on."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

TEXT = st.text(alphabet="ab \n\t<&>\"'\\|.$x", max_size=6)
STRING_VALUES = st.text(alphabet='ab <&>"\n\\', max_size=6)
FLOATS = st.sampled_from([0.0, -0.0, 0.1, 1.5, -2.25, 3.0, 1e21, 1e-7, 1e6, 123456.0, 100000.0, 2.5e-5])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-5, max_value=300), FLOATS, STRING_VALUES)
KEYS = st.sampled_from(["A", "B", "k", "x", "Role"])
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=10,
)
DATA = st.fixed_dictionaries(
    {
        "A": SCALARS | VALUES,
        "B": SCALARS | VALUES,
        "L": st.lists(VALUES, max_size=4),
        "M": st.dictionaries(KEYS, VALUES, max_size=4),
        "S": STRING_VALUES,
        "N": st.integers(min_value=-3, max_value=5),
    }
)

FIELDS = [".A", ".B", ".L", ".M", ".S", ".N", ".M.k", ".M.A.x", ".L.x", ".Missing", ".Missing.x", "."]
STRING_LITERALS = ['"a"', '"<&>"', '""', "`raw\\n`", '"tab\\t"', '"k"', '"A"']
NUMBER_LITERALS = ["0", "1", "2", "-1", "3", "1.5", "0.1", "1e3", "0x1F", "'a'", "300"]
FORMATS = ['"%v"', '"%s"', '"%d"', '"[%5v]"', '"%-4s|"', '"%v %v"', '"%.2f"', '"%t"', '"%05d"']

# function name -> how many operands it usually takes
FUNCS = {
    "len": 1, "index": 2, "slice": 2, "eq": 2, "ne": 2, "lt": 2, "le": 2, "gt": 2, "ge": 2, "and": 2,
    "or": 2, "not": 1, "print": 2, "println": 1, "html": 1, "js": 1, "urlquery": 1, "json": 1,
}  # fmt: skip


@st.composite
def operand(draw: st.DrawFn, scope: tuple[str, ...], depth: int) -> str:
    kinds = ["field", "field", "literal", "variable"] + (["call", "paren"] if depth > 0 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "field":
        return draw(st.sampled_from(FIELDS))
    if kind == "variable":
        name = draw(st.sampled_from(scope))
        return (
            name + draw(st.sampled_from(["", "", ".A", ".k"]))
            if name != "$"
            else draw(st.sampled_from(["$", "$.A", "$.L", "$.M.k"]))
        )
    if kind == "literal":
        return draw(st.sampled_from([*STRING_LITERALS, *NUMBER_LITERALS, "true", "false", "nil"]))
    if kind == "paren":
        return "(" + draw(pipeline(scope, depth - 1)) + ")"
    return draw(call(scope, depth - 1))


@st.composite
def call(draw: st.DrawFn, scope: tuple[str, ...], depth: int) -> str:
    if draw(st.integers(0, 5)) == 0:
        return "printf " + draw(st.sampled_from(FORMATS)) + " " + draw(operand(scope, depth))
    name = draw(st.sampled_from(sorted(FUNCS)))
    count = FUNCS[name] + draw(st.sampled_from([0, 0, 0, 1, -1]))
    args = [draw(operand(scope, depth)) for _ in range(max(count, 0))]
    return " ".join([name, *args])


@st.composite
def pipeline(draw: st.DrawFn, scope: tuple[str, ...], depth: int = 2) -> str:
    head = draw(st.one_of(operand(scope, depth), call(scope, depth)))
    if draw(st.integers(0, 4)) == 0:
        tail = draw(
            st.sampled_from(["len", "print", "json", "html", 'printf "%v!"', "not", "eq 1", "index .L"])
        )
        return f"{head} | {tail}"
    return head


def _delims(draw: st.DrawFn) -> tuple[str, str]:
    left = draw(st.sampled_from(["{{", "{{ ", "{{- ", "{{"]))
    right = draw(st.sampled_from(["}}", " }}", " -}}", "}}"]))
    return left, right


@st.composite
def block(draw: st.DrawFn, scope: tuple[str, ...] = ("$",), depth: int = 3, in_range: bool = False) -> str:
    """A list of items; a `$x := …` in it puts $x in scope for the items after it."""
    out: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        kinds = ["text", "action", "action", "declare", "comment"]
        if depth > 0:
            kinds += ["if", "range", "with"]
        if in_range:
            kinds += ["break", "continue"]
        kind = draw(st.sampled_from(kinds))
        left, right = _delims(draw)
        if kind == "text":
            out.append(draw(TEXT))
        elif kind == "action":
            out.append(f"{left}{draw(pipeline(scope))}{right}")
        elif kind == "comment":
            out.append(left.rstrip() + "/* c */" + right.lstrip())
        elif kind == "declare":
            name = draw(st.sampled_from(["$x", "$y"]))
            op = ":=" if name not in scope or draw(st.booleans()) else "="
            out.append(f"{left}{name} {op} {draw(pipeline(scope))}{right}")
            scope = (*scope, name) if name not in scope else scope
        elif kind in ("break", "continue"):
            out.append(f"{left}{kind}{right}")
        elif kind == "range":
            header = draw(st.sampled_from(["", "$v := ", "$i, $v := "]))
            inner = (*scope, "$v", "$i") if "$i" in header else (*scope, "$v") if header else scope
            body = draw(block(inner, depth - 1, in_range=True))
            els = draw(
                st.one_of(st.just(""), block(scope, depth - 1, in_range).map(lambda b: "{{ else }}" + b))
            )
            subject = draw(st.sampled_from([".L", ".M", ".A", ".B", ".Missing", "$.L", ".S"]))
            out.append(f"{left}range {header}{subject}{right}{body}{els}{{{{ end }}}}")
        else:
            body = draw(block(scope, depth - 1, in_range))
            els = draw(
                st.one_of(
                    st.just(""),
                    block(scope, depth - 1, in_range).map(lambda b: "{{ else }}" + b),
                    pipeline(scope).map(lambda p: "{{ else if " + p + " }}x"),
                )
            )
            if kind == "with" and els.startswith("{{ else if"):
                els = ""
            out.append(f"{left}{kind} {draw(pipeline(scope))}{right}{body}{els}{{{{ end }}}}")
    return "".join(out)


def data() -> st.SearchStrategy[dict[str, Any]]:
    return DATA
