"""plan(): the pure diff of spec against what was observed and remembered, table-driven."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest
from spec_fakes import digest, make_spec

from modelyard.spec.plan import (
    ActionKind,
    Applied,
    Failure,
    ImageState,
    Inventory,
    LoadTarget,
    Memory,
    Observed,
    Phase,
    Reason,
    Running,
    format_plan,
    plan,
    target_for,
)

SESSION = "this-run"
IMAGE = "localhost:5000/team/chat:v1"
MODEL = f"models: [{{name: chat, image: {IMAGE}, context: 2048}}]"
NOW = 1000.0


def target(body: str = MODEL, name: str = "chat", at: str = "a") -> LoadTarget:
    spec = make_spec(body)
    model = spec.model(name)
    assert model is not None
    return target_for(model, {r: digest(at) for r in model.reference_texts})


def applied(t: LoadTarget, *, session: str = SESSION, context: int = 2048, slots: int = 1) -> Applied:
    return Applied(t.digest, t.load_key, t.options_key, t.serve_key, context, slots, t.keep_alive, session)


def ready(name: str = "chat", at: str = "a", **kwargs: object) -> Running:
    values: dict[str, object] = {"state": "ready", "size": 100, "context_length": 2048, "slots": 1}
    values.update(kwargs)
    return Running(name, digest(at), **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    id: str
    body: str = MODEL
    tag: str | None = "a"  # what IMAGE resolves to now (None: the registry cannot be asked)
    stored: tuple[str, ...] = ("a",)
    running: tuple[Running, ...] = ()
    memory: dict[str, Memory] = field(default_factory=dict)
    known: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    budget: int = 10_000
    expect: tuple[tuple[str, str], ...] = ()  # (kind, model) in order
    phase: Phase | None = None
    expired: frozenset[str] = frozenset()  # names the scheduler unloaded after their keep_alive


T = target()
FIRST = MODEL.replace("context: 2048", "context: 2048, priority: 5")
CASES = [
    Case("not-loaded-loads", expect=(("load", "chat"),), phase=Phase.LOADING),
    Case("not-stored-pulls-first", stored=(), expect=(("pull", "chat"),), phase=Phase.PULLING),
    Case(
        "as-the-spec-says-does-nothing",
        running=(ready(),),
        memory={"chat": Memory(applied(T))},
        phase=Phase.READY,
    ),
    Case(
        "tag-moved-pulls",
        tag="b",
        running=(ready(),),
        memory={"chat": Memory(applied(T))},
        expect=(("pull", "chat"),),
    ),
    Case(
        "tag-moved-and-pulled-swaps",
        tag="b",
        stored=("a", "b"),
        running=(ready(),),
        memory={"chat": Memory(applied(T))},
        expect=(("swap", "chat"),),
    ),
    Case(
        "new-digest-and-new-options-swaps",  # the old one serves until the new one is loaded
        body=MODEL.replace("2048", "4096"),
        tag="b",
        stored=("a", "b"),
        running=(ready(),),
        memory={"chat": Memory(applied(T))},
        expect=(("swap", "chat"),),
    ),
    Case(
        "context-changed-reloads",
        body=MODEL.replace("2048", "4096"),
        running=(ready(),),
        memory={"chat": Memory(applied(T))},
        expect=(("reload", "chat"),),
    ),
    Case(
        "params-changed-updates-in-place",
        body=MODEL.replace("context: 2048", "context: 2048, params: {temperature: 0.1}"),
        running=(ready(),),
        memory={"chat": Memory(applied(T))},
        expect=(("update", "chat"),),
    ),
    Case(
        "keep-alive-and-pinned-update-in-place",
        body=MODEL.replace("context: 2048", "context: 2048, keepAlive: 1h, pinned: true"),
        running=(ready(),),
        memory={"chat": Memory(applied(T))},
        expect=(("update", "chat"),),
    ),
    Case(
        "crashed-is-reloaded",
        running=(ready(state="failed", last_error="runner crashed (SIGKILL)"),),
        memory={"chat": Memory(applied(T))},
        expect=(("load", "chat"),),
    ),
    Case(
        "crashed-without-self-heal-only-reports",
        body=MODEL + "\nselfHeal: false",
        running=(ready(state="failed", last_error="x"),),
        memory={"chat": Memory(applied(T))},
        phase=Phase.DRIFTED,
    ),
    Case(
        "unloaded-outside-the-spec-is-loaded-again",
        memory={"chat": Memory(applied(T))},
        expect=(("load", "chat"),),
    ),
    Case(
        "idle-unloaded-with-a-keep-alive-is-standby",
        body=MODEL.replace("context: 2048", "context: 2048, keepAlive: 5m"),
        memory={
            "chat": Memory(applied(target(MODEL.replace("context: 2048", "context: 2048, keepAlive: 5m"))))
        },
        expired=frozenset({"chat"}),
        phase=Phase.STANDBY,
    ),
    Case(
        "standby-stays-standby-when-its-tag-moves",
        body=MODEL.replace("context: 2048", "context: 2048, keepAlive: 5m"),
        tag="b",
        stored=("a", "b"),
        memory={
            "chat": Memory(applied(target(MODEL.replace("context: 2048", "context: 2048, keepAlive: 5m"))))
        },
        expired=frozenset({"chat"}),
        phase=Phase.STANDBY,
    ),
    # A spec review: a client's keep_alive 0 within the keepAlive was taken for its end, and
    # selfHeal never loaded it again; and a request waking a Standby model made it Waiting (not
    # Ready), so /health said 503 for the load.
    Case(
        "unloaded-by-a-client-within-its-keep-alive-is-loaded-again",
        body=MODEL.replace("context: 2048", "context: 2048, keepAlive: 5m"),
        memory={
            "chat": Memory(applied(target(MODEL.replace("context: 2048", "context: 2048, keepAlive: 5m"))))
        },
        expect=(("load", "chat"),),
    ),
    Case(
        "standby-loading-for-a-request-stays-standby",
        body=MODEL.replace("context: 2048", "context: 2048, keepAlive: 5m"),
        running=(ready(state="loading"),),
        memory={
            "chat": Memory(applied(target(MODEL.replace("context: 2048", "context: 2048, keepAlive: 5m"))))
        },
        expired=frozenset({"chat"}),
        phase=Phase.STANDBY,
    ),
    Case(
        "after-a-restart-a-keep-alive-model-is-preloaded",
        body=MODEL.replace("context: 2048", "context: 2048, keepAlive: 5m"),
        memory={"chat": Memory(applied(T, session="before"))},
        expect=(("load", "chat"),),
    ),
    Case(
        "reloaded-with-other-options-outside-is-restored",
        running=(ready(context_length=512),),
        memory={"chat": Memory(applied(T))},
        expect=(("reload", "chat"),),
    ),
    Case(
        "loaded-by-someone-else-is-adopted",
        running=(ready(),),
        expect=(("update", "chat"),),
    ),
    Case(
        "loading-now-waits",
        running=(ready(state="loading"),),
        memory={"chat": Memory(applied(T))},
        phase=Phase.WAITING,
    ),
    Case(
        "in-backoff-waits",
        memory={"chat": Memory(None, Failure(Reason.LOAD_FAILED, "boom"), 2, NOW + 5)},
        phase=Phase.WAITING,
    ),
    Case(
        "backoff-over-tries-again",
        memory={"chat": Memory(None, Failure(Reason.LOAD_FAILED, "boom"), 2, NOW - 1)},
        expect=(("load", "chat"),),
    ),
    Case(
        "registry-down-goes-on-with-the-known-digest",
        tag=None,
        running=(ready(),),
        memory={"chat": Memory(applied(T))},
        known={IMAGE: digest("a")},
        phase=Phase.READY,
    ),
    Case("registry-down-and-nothing-known-fails", tag=None, stored=(), phase=Phase.FAILED),
    Case("too-big-even-alone", sizes={"chat": 20_000}, phase=Phase.FAILED),
    # An estimate over the budget by less than the estimates err: it loads, and is then measured.
    Case("an-estimate-just-over-the-budget-loads", sizes={"chat": 11_000}, expect=(("load", "chat"),)),
    # ...but not once it loaded, measured over and was unloaded for it: it looped so for ever (a spec
    # review); a measurement of other options or another digest is not this load's.
    Case(
        "a-load-measured-too-big-is-not-loaded-again",
        sizes={"chat": 11_000},
        memory={"chat": Memory(measured=(T.load_key, 12_000))},
        phase=Phase.FAILED,
    ),
    Case(
        "a-measurement-of-another-load-does-not-count",
        sizes={"chat": 11_000},
        memory={"chat": Memory(measured=("another load key", 12_000))},
        expect=(("load", "chat"),),
    ),
    Case(
        "a-load-measured-too-big-loads-once-the-budget-holds-it",
        sizes={"chat": 11_000},
        memory={"chat": Memory(measured=(T.load_key, 9_000))},
        expect=(("load", "chat"),),
    ),
    Case(
        "a-new-digest-too-big-even-alone-leaves-the-old-serving",
        tag="b",
        stored=("a", "b"),
        running=(ready(size=2000),),
        memory={"chat": Memory(applied(T))},
        sizes={"chat": 20_000},
        phase=Phase.FAILED,
    ),
    Case(
        "the-old-digest-serving-on-still-counts-against-the-budget",
        body=FIRST[:-1] + ", {name: other, image: localhost:5000/team/other:v1}]",
        tag="b",
        stored=("a", "b"),
        running=(ready(size=6000),),
        memory={"chat": Memory(applied(target(FIRST)))},
        sizes={"chat": 20_000, "other": 5000},
        expect=(),  # other does not fit beside the 6,000 bytes still serving
    ),
    # Beside the models before it, an estimate within the margin of the room left loads and is
    # measured under the spec's own memory; under the server's budget the scheduler takes the
    # estimate as it is, and evicted the model before it to load this one (a spec review).
    Case(
        "beside-others-under-the-servers-budget-the-estimate-stands",
        body=FIRST[:-1] + ", {name: other, image: localhost:5000/team/other:v1}]",
        running=(ready(size=5000),),
        memory={"chat": Memory(applied(target(FIRST)))},
        sizes={"other": 5500},
        expect=(),
    ),
    Case(
        "beside-others-under-the-specs-memory-the-estimate-may-run-over",
        body="memory: {ram: 10000}\n" + FIRST[:-1] + ", {name: other, image: localhost:5000/team/other:v1}]",
        running=(ready(size=5000),),
        memory={"chat": Memory(applied(target(FIRST)))},
        sizes={"other": 5500},
        expect=(("load", "other"),),
    ),
    Case(
        "an-old-digest-serving-through-a-pull-counts-against-the-budget",
        body=FIRST[:-1] + ", {name: other, image: localhost:5000/team/other:v1}]",
        tag="b",
        stored=("a",),
        running=(ready(size=6000),),
        memory={"chat": Memory(applied(target(FIRST)))},
        sizes={"other": 5000},
        expect=(("pull", "chat"),),  # other does not fit beside the 6,000 bytes serving on
    ),
    Case(
        "a-new-digest-just-over-the-budget-does-not-replace-what-serves",
        tag="b",
        stored=("a", "b"),
        running=(ready(size=2000),),
        memory={"chat": Memory(applied(T))},
        sizes={"chat": 11_000},  # within the estimate's margin, but it would replace a working one
        phase=Phase.FAILED,
    ),
    Case(
        "the-loaded-target-measured-over-a-lowered-budget-goes",
        running=(ready(size=12_000),),
        memory={"chat": Memory(applied(T))},
        expect=(("unload", "chat"),),
        phase=Phase.FAILED,
    ),
    # A spec review: names on one image with the same options share one runner; each was charged a
    # runner of its own before any was loaded (after a restart), and two of three did not fit.
    Case(
        "names-that-will-share-a-runner-count-it-once",
        body=f"""
        models:
          - {{name: chat, image: {IMAGE}}}
          - {{name: two, image: {IMAGE}}}
          - {{name: three, image: {IMAGE}, context: 512}}
        """,
        sizes={"chat": 6_000, "two": 6_000, "three": 6_000},
        expect=(("load", "chat"), ("load", "two")),  # three's context needs a runner of its own
    ),
    Case(
        "lower-priority-yields-memory",
        body="""
        models:
          - {name: big, image: localhost:5000/team/big:v1, priority: 5}
          - {name: chat, image: localhost:5000/team/chat:v1}
        """,
        running=(ready(size=5000),),  # measured: it is loaded
        memory={
            "chat": Memory(applied(target("models: [{name: chat, image: localhost:5000/team/chat:v1}]")))
        },
        sizes={"big": 7000},
        expect=(("unload", "chat"), ("load", "big")),
    ),
    Case(
        "prune-unloads-only-what-the-spec-loaded",
        running=(ready(), ready("old"), ready("adhoc")),
        memory={"chat": Memory(applied(T)), "old": Memory(applied(target(name="chat")))},
        expect=(("unload", "old"),),
    ),
    Case(
        "prune-all-unloads-the-rest-too",
        body=MODEL + "\nprune: all",
        running=(ready(), ready("old"), ready("adhoc")),
        memory={"chat": Memory(applied(T)), "old": Memory(applied(target(name="chat")))},
        expect=(("unload", "adhoc"), ("unload", "old")),
    ),
    Case(
        # A reconcile audit: a model whose load failed was never applied, so dropping it from the
        # spec left its failed entry listed by ps for ever (and stop could not find it).
        "prune-unloads-one-whose-load-failed",
        running=(ready(), ready("bad", state="failed", size=0), ready("adhoc", state="failed", size=0)),
        memory={"chat": Memory(applied(T)), "bad": Memory(None, Failure(Reason.LOAD_FAILED, "x"), 1)},
        expect=(("unload", "bad"),),
    ),
    Case(
        "prune-false-leaves-them",
        body=MODEL + "\nprune: false",
        running=(ready(), ready("old")),
        memory={"chat": Memory(applied(T)), "old": Memory(applied(target(name="chat")))},
    ),
    Case("suspended-does-nothing", body=MODEL + "\nsuspend: true", stored=(), phase=Phase.SUSPENDED),
    Case(
        "a-suspended-model-does-nothing",
        body=MODEL.replace("context: 2048", "context: 2048, suspend: true"),
        stored=(),
        phase=Phase.SUSPENDED,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan(case: Case) -> None:
    spec = make_spec(case.body)
    references = {r for m in spec.models for r in m.reference_texts}
    images = {}
    for reference in references:
        own = case.tag if reference == IMAGE else "a"
        known = case.known.get(reference)
        effective = digest(own) if own else known
        local = effective if effective and effective[-1] in case.stored else None
        error = None if own else Failure(Reason.PULL_FAILED, "registry localhost:5000 is unavailable")
        images[reference] = ImageState(reference, digest(own) if own else None, local, error)
    observed = Observed(
        running={r.name: r for r in case.running},
        images=images,
        footprints=case.sizes,
        budget=case.budget,
        now=NOW,
        session=SESSION,
        expired=case.expired,
    )
    planned = plan(spec, observed, Inventory(case.memory, case.known))
    assert [(a.kind.value, a.model) for a in planned.actions] == list(case.expect)
    if case.phase is not None:
        chat = planned.model("chat")
        assert chat is not None and chat.phase is case.phase, chat


def test_a_load_protects_the_models_before_it() -> None:
    """What the scheduler must not evict for each load: the models before it by priority, then
    spec order (ModelRequest.protects)."""
    spec = make_spec(
        f"""
        models:
          - {{name: low, image: {IMAGE}, context: 512}}
          - {{name: high, image: {IMAGE}, context: 1024, priority: 9}}
          - {{name: mid, image: {IMAGE}, context: 256, priority: 3}}
          - {{name: last, image: {IMAGE}, context: 128}}
        """
    )
    images = {IMAGE: ImageState(IMAGE, digest("a"), digest("a"))}
    planned = plan(spec, Observed({}, images, {}, 10**9, NOW, SESSION), Inventory())
    protects = {a.model: a.target.protects for a in planned.actions if a.target is not None}
    assert protects == {
        "high": frozenset(),
        "mid": {"high"},
        "low": {"high", "mid"},
        "last": {"high", "mid", "low"},
    }


@pytest.mark.parametrize(
    ("failure_kind", "reason", "said"),
    [("crashed", Reason.CRASHED, "its runner failed"), ("load-failed", Reason.LOAD_FAILED, "failed to load")],
)
def test_a_failed_runner_is_reported_as_a_crash_or_a_failed_load(
    failure_kind: str, reason: Reason, said: str
) -> None:
    """A reconcile audit: weights llama.cpp refused were reported Crashed, though they never ran."""
    spec = make_spec(MODEL)
    observed = Observed(
        running={"chat": ready(state="failed", last_error="boom", failure_kind=failure_kind)},
        images={IMAGE: ImageState(IMAGE, digest("a"), digest("a"))},
        footprints={},
        budget=10_000,
        now=NOW,
        session=SESSION,
    )
    chat = plan(spec, observed, Inventory({})).model("chat")
    assert chat is not None and chat.failure is not None
    assert chat.failure.reason is reason and chat.message == f"{said} (boom); loading it again"


@pytest.mark.parametrize(("ram", "side_by_side"), [(150, False), (1000, True)])
def test_a_swap_the_specs_memory_cannot_hold_side_by_side_unloads_the_old_first(
    ram: int, side_by_side: bool
) -> None:
    spec = make_spec(f"memory: {{ram: {ram}}}\n" + MODEL)
    images = {IMAGE: ImageState(IMAGE, digest("b"), digest("b"))}
    observed = Observed(
        running={"chat": ready(size=100)},
        images=images,
        footprints={"chat": 100},
        budget=10**9,  # the machine holds both: only the spec's budget is short
        now=NOW,
        session=SESSION,
    )
    planned = plan(spec, observed, Inventory({"chat": Memory(applied(target()))}, {}))
    [swap] = planned.actions
    assert swap.kind is ActionKind.SWAP and swap.side_by_side is side_by_side
    assert ("short gap" in swap.reason) is not side_by_side


@pytest.mark.parametrize(
    ("memory", "limit"),
    [("memory: {ram: 150}\n", "raise spec.memory"), ("", "raise the server's $MODELYARD_RAM_BUDGET")],
)
def test_does_not_fit_names_the_limit_to_raise(memory: str, limit: str) -> None:
    """A spec review: the advice said to raise spec.memory where the server's budget was the limit."""
    spec = make_spec(memory + MODEL)
    image = ImageState(IMAGE, digest("a"), digest("a"))
    observed = Observed({}, {IMAGE: image}, {"chat": 1000}, 150, NOW, SESSION)
    chat = plan(spec, observed, Inventory()).model("chat")
    assert chat is not None and chat.failure is not None and chat.failure.reason is Reason.DOES_NOT_FIT
    assert chat.failure.message.endswith(limit), chat.failure.message


def test_a_permanent_failure_waits_for_a_change_to_the_model() -> None:
    spec = make_spec(MODEL)
    image = ImageState(IMAGE, digest("a"), digest("a"))
    observed = Observed({}, {IMAGE: image}, {}, 10_000, NOW + 10_000, SESSION)
    key = plan(spec, observed, Inventory()).models[0].key
    failed = Memory(None, Failure(Reason.DOES_NOT_FIT, "too big", permanent=True), 1, NOW + 1, key)
    blocked = plan(spec, observed, Inventory({"chat": failed}))
    assert (
        blocked.empty
        and blocked.models[0].phase is Phase.FAILED
        and "waiting for a change" in (blocked.models[0].message)
    )
    changed = make_spec(MODEL.replace("2048", "1024"))
    assert [a.kind for a in plan(changed, observed, Inventory({"chat": failed})).actions] == [ActionKind.LOAD]
    moved = Observed(
        {}, {IMAGE: ImageState(IMAGE, digest("b"), digest("b"))}, {}, 10_000, NOW + 10_000, SESSION
    )
    assert [a.kind for a in plan(spec, moved, Inventory({"chat": failed})).actions] == [ActionKind.LOAD]


def test_higher_priority_models_are_acted_on_first() -> None:
    spec = make_spec(
        """
        models:
          - {name: low, image: x, priority: 1}
          - {name: high, image: y, priority: 9}
          - {name: mid, image: z, priority: 5}
        """
    )
    images = {r: ImageState(r, digest("a"), digest("a")) for r in ("x", "y", "z")}
    observed = Observed({}, images, {}, 10_000, NOW, SESSION)
    assert [a.model for a in plan(spec, observed, Inventory()).actions] == ["high", "mid", "low"]


def test_format_plan_lists_actions_and_what_needs_nothing() -> None:
    spec = make_spec(
        f"""
        models:
          - {{name: chat, image: {IMAGE}, context: 2048}}
          - {{name: idle, image: y, keepAlive: forever}}
        """
    )
    images = {
        IMAGE: ImageState(IMAGE, digest("b"), None),
        "y": ImageState("y", digest("a"), digest("a")),
    }
    t = target("models: [{name: idle, image: y}]", "idle")
    observed = Observed({"idle": ready("idle", context_length=4096)}, images, {}, 10_000, NOW, SESSION)
    text = format_plan(plan(spec, observed, Inventory({"idle": Memory(applied(t, context=4096))})))
    assert text.splitlines() == [
        f"↓ pull    chat {IMAGE}@{digest('b')[:19]}  (not in the store; loads once pulled)",
        f"  ready   idle  (serving {digest('a')[:19]})",
    ]
    assert math.isinf(t.keep_alive)


def test_format_plan_of_a_pinned_pull_and_of_a_failure_with_nothing_to_do() -> None:
    pinned = f"localhost:5000/team/tiny@{digest('c')}"
    spec = make_spec(f"models: [{{name: chat, image: '{pinned}'}}]")
    observed = Observed({}, {pinned: ImageState(pinned, digest("c"), None)}, {}, 10_000, NOW, SESSION)
    [line] = format_plan(plan(spec, observed, Inventory())).splitlines()
    assert line.startswith(f"↓ pull    chat {pinned}  (") and line.count("@sha256:") == 1

    missing = "localhost:5000/team/gone:v1"
    spec = make_spec(f"models: [{{name: gone, image: '{missing}'}}]")
    error = Failure(Reason.PULL_FAILED, "not found in the registry", permanent=True)
    observed = Observed({}, {missing: ImageState(missing, None, None, error)}, {}, 10_000, NOW, SESSION)
    lines = format_plan(plan(spec, observed, Inventory())).splitlines()
    assert lines[0] == "nothing to do now; not as the spec says:"
    assert lines[1].startswith("  failed  gone")


@pytest.mark.parametrize(
    ("footprint", "budget", "used", "fragments"),
    [
        (3 * 2**30, 2**30, 0, ["needs about 3.00 GiB but the budget is 1.00 GiB"]),
        (3 * 2**20, 2**20, 0, ["needs about 3.0 MiB but the budget is 1.0 MiB"]),  # not "0.00 GiB"
        (200 * 2**20, 150 * 2**20, 0, ["needs about 200.0 MiB but the budget is 150.0 MiB"]),
        (2**30, 2 * 2**30, 1536 * 2**20, ["needs about 1.00 GiB", "use 1.50 GiB of the 2.00 GiB budget"]),
    ],
)
def test_does_not_fit_says_sizes_that_mean_something(
    footprint: int, budget: int, used: int, fragments: list[str]
) -> None:
    from modelyard.spec.plan import _admit

    failure = _admit(footprint, budget, used)
    assert failure is not None and failure.reason is Reason.DOES_NOT_FIT
    for fragment in fragments:
        assert fragment in failure.message


def test_a_model_that_shares_another_ones_runner_costs_no_memory_of_its_own() -> None:
    from modelyard.spec.plan import _footprint

    t = target()
    observed = Observed({}, {}, {"chat": 5_000}, 10_000, NOW, SESSION)
    shared = ready(size=0, shares_runner=True)
    assert _footprint(t, shared, Memory(applied(t)), observed) == (0, True)
    own = ready(size=0)  # size unknown: the estimate stands
    assert _footprint(t, own, Memory(applied(t)), observed) == (5_000, False)
    reloading = replace(applied(t), load_key="other options")  # it will need a runner of its own
    assert _footprint(t, shared, Memory(reloading), observed) == (5_000, False)
