"""What rendering a chat prompt costs, this tree against a baseline checkout, side by side.

A request's prompt is rendered through the model's template on the server's event loop, so what
it costs is paid by every request. This renders a 21-message chat through real chat templates
(Gemma 3's and Qwen 2.5's Jinja templates, and Ollama's Go form of a ChatML template), in rounds
that alternate between this tree and `--baseline` (a checkout of another commit: `git worktree
add /tmp/base REV`), each side in a process of its own; medians of the rounds, µs per render.
`--workers`: this tree also renders through its template worker processes, as the server does
(runtime/template_workers.py), a third side: what the round trip to a worker adds.

    python benchmarks/bench_template_render.py --baseline /tmp/base [--rounds 7] [--renders 200]
                                               [--workers]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Runs inside each tree: prints {template: µs per render}.
MEASURE = """
import json, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from template_corpus import CHATML, GEMMA3_JINJA, QWEN25_JINJA
from modelyard.builder.prompt import ChatMessage, ModelPrompting, PromptRequest, render_prompt

renders = int(sys.argv[2])
render = render_prompt
if sys.argv[3] == "workers":
    import functools
    from modelyard.runtime.template_workers import TemplateWorkers
    pool = TemplateWorkers()
    render = functools.partial(render_prompt, render=pool.render)
roles = ("user", "assistant")
messages = [ChatMessage(roles[i % 2], f"message number {i} " * 20) for i in range(21)]
request = PromptRequest.chat(messages)
out = {}
for name, model in (
    ("gemma3 (jinja)", ModelPrompting(chat_template=GEMMA3_JINJA)),
    ("qwen2.5 (jinja)", ModelPrompting(chat_template=QWEN25_JINJA)),
    ("chatml (go)", ModelPrompting(template=CHATML)),
):
    render(model, request)
    started = time.perf_counter()
    for _ in range(renders):
        render(model, request)
    out[name] = (time.perf_counter() - started) / renders * 1e6
print(json.dumps(out))
"""


def measure(tree: Path, renders: int, where: str = "here") -> dict[str, float]:
    """µs per render of each template, rendered `where`: "here" (in the measuring process) or
    "workers" (through the tree's template worker processes)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tree), str(renders), where],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--baseline", type=Path, required=True, help="a checkout of the commit to compare with"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--renders", type=int, default=200, help="renders per template and round")
    parser.add_argument(
        "--workers", action="store_true", help="also this tree through its template worker processes"
    )
    args = parser.parse_args()
    sides = {"baseline": (args.baseline.resolve(), "here"), "this tree": (HERE.parent, "here")}
    if args.workers:
        sides["this tree, in workers"] = (HERE.parent, "workers")
    results: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
    for round_ in range(args.rounds):
        order = list(sides.items()) if round_ % 2 == 0 else list(sides.items())[::-1]
        for side, (tree, where) in order:
            for name, us in measure(tree, args.renders, where).items():
                results[side].setdefault(name, []).append(us)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{args.rounds} rounds x {args.renders} renders, medians\n"
    )
    others = [side for side in sides if side != "baseline"]
    print("| template | baseline µs | " + " | ".join(f"{side} µs | ratio" for side in others) + " |")
    print("|---|---|" + "---|---|" * len(others))
    for name in results["baseline"]:
        base = statistics.median(results["baseline"][name])
        cells = []
        for side in others:
            ours = statistics.median(results[side][name])
            cells.append(f"{ours:.1f} | {ours / base:.2f}×")
        print(f"| {name} | {base:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
