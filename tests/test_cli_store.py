"""The CLI over the store and the builder: exit codes, messages, and the store left as it was."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modelyard.cli import main
from modelyard.store.image import sha256_digest

ROOT = Path(__file__).resolve().parent.parent


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return home


def cli(*args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())


def store_snapshot(home: Path) -> dict[str, bytes]:
    root = home / "store"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.fixture
def work(tmp_path: Path, tiny_gguf: Path, tiny_lora: Path) -> Path:
    from tinygguf import write_not_gguf, write_truncated_gguf

    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(tiny_gguf, work / "weights.gguf")
    shutil.copyfile(tiny_lora, work / "lora.gguf")
    write_not_gguf(work / "notgguf.gguf")
    write_truncated_gguf(tiny_gguf, work / "truncated.gguf")
    (work / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM base\nPARAMETER temperature 0.5\n")
    return work


def test_build_list_show_tag_rm(home: Path, work: Path) -> None:
    built = cli("build", "-t", "team/chat:v1", "-f", str(work / "Modelfile"), "--quiet")
    assert built.code == 0 and built.out.strip().startswith("sha256:") and built.err == ""
    digest = built.out.strip()

    listed = cli("list")
    assert "team/chat:v1" in listed.out and digest[7:19] in listed.out
    as_json = json.loads(cli("list", "--json").out)
    assert as_json["models"][0]["digest"] == digest

    shown = cli("show", "team/chat:v1")
    assert "llama" in shown.out and "temperature" in shown.out and "base" in shown.out
    assert cli("show", "team/chat:v1", "--system").out.strip() == "base"
    assert json.loads(cli("show", "team/chat:v1", "--json").out)["parameters"] == {"temperature": 0.5}

    assert cli("tag", "team/chat:v1", "chat").code == 0
    assert cli("show", "chat", "--json").code == 0
    removed = cli("rm", "team/chat:v1")
    assert removed.code == 0 and "0 blobs" in removed.out, "the other tag still needs every blob"
    cli("tag", "chat", "again")
    with pytest.MonkeyPatch.context() as patch:  # a server address it cannot read: rm is done still
        patch.setenv("MODELYARD_HOST", "localhost:0")
        removed = cli("rm", "again")
    assert removed.code == 0 and "warning: no server asked to unload them" in removed.err, removed
    removed = cli("rm", "chat")
    assert removed.code == 0 and "blobs" in removed.out
    assert cli("list", "--json").out.count("digest") == 0
    assert cli("verify").code == 0


def test_create_alias_and_positional_name(home: Path, work: Path) -> None:
    made = cli("create", "m", "-f", str(work / "Modelfile"), "--quiet")
    assert made.code == 0
    assert cli("show", "m", "--system").out.strip() == "base"


def test_history_and_rollback(home: Path, work: Path) -> None:
    first = cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet").out.strip()
    (work / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM changed\n")
    second = cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet").out.strip()
    history = json.loads(cli("history", "m", "--json").out)
    assert [h["digest"] for h in history] == [second, first] and history[0]["current"]
    rolled = cli("rollback", "m")
    assert rolled.code == 0 and first in rolled.out
    assert cli("show", "m", "--system").out.strip() == "base"
    assert cli("rollback", "m", "--to", second[7:20]).code == 0
    assert cli("show", "m", "--system").out.strip() == "changed"
    bad = cli("rollback", "m", "--to", "ffff")
    assert bad.code == 1 and "not in its history" in bad.err


@pytest.mark.parametrize(
    ("modelfile", "fragments"),
    [
        pytest.param("FROM ./missing.gguf\n", ["no such file"], id="missing-from-file"),
        pytest.param("FROM ./notgguf.gguf\n", ["notgguf.gguf", "not a GGUF"], id="not-gguf"),
        pytest.param("FROM ./truncated.gguf\n", ["truncated"], id="truncated-gguf"),
        pytest.param(
            "FROM ./weights.gguf\nPARAMETER temprature 1\n",
            ["Bad:2:", "temprature", "temperature"],
            id="unknown-parameter",
        ),
        pytest.param(
            "FROM ./weights.gguf\nPARAMETER top_k high\n", ["Bad:2:", "top_k", "integer"], id="bad-value-type"
        ),
        pytest.param(
            'FROM ./weights.gguf\nSYSTEM """never closed\n', ["Bad:2:", '"""'], id="unterminated-quote"
        ),
        pytest.param("FROM ./weights.gguf\nMESSAGE robot hi\n", ["Bad:2:", "role"], id="bad-message-role"),
        pytest.param("FROM ./lora.gguf\n", ["LoRA adapter", "ADAPTER"], id="lora-as-from"),
        pytest.param(
            "FROM ./weights.gguf\nADAPTER ./weights.gguf\n", ["not a LoRA adapter"], id="base-as-adapter"
        ),
    ],
)
def test_bad_build_input_exit_1_store_unchanged(
    home: Path, work: Path, modelfile: str, fragments: list[str]
) -> None:
    assert cli("build", "-t", "keep", "-f", str(work / "Modelfile"), "--quiet").code == 0
    before = store_snapshot(home)
    (work / "Bad").write_text(modelfile)
    result = cli("build", "-t", "bad", "-f", str(work / "Bad"))
    assert result.code == 1
    assert result.err.count("Error:") == 1 and "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err
    assert store_snapshot(home) == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["build", "-t", "Bad Name!", "-f", "Modelfile"], "whitespace", id="illegal-reference"),
        pytest.param(
            ["build", "-t", "bad$name", "-f", "Modelfile"], "repository component", id="illegal-char"
        ),
        pytest.param(["rm", "nothing-here"], "not found", id="rm-unknown"),
        pytest.param(["show", "nothing-here"], "not found", id="show-unknown"),
        pytest.param(["tag", "nothing-here", "x"], "not found", id="tag-unknown"),
        pytest.param(["build", "-t", "m", "-f", "/nonexistent/Modelfile"], "no such file", id="no-modelfile"),
    ],
)
def test_user_errors_exit_1(
    home: Path, work: Path, args: list[str], fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(work)
    cli("build", "-t", "keep", "--quiet")
    before = store_snapshot(home)
    result = cli(*args)
    assert result.code == 1 and fragment in result.err, result.err
    assert store_snapshot(home) == before


def test_prune_and_verify_commands(home: Path, work: Path) -> None:
    cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet")
    (work / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM other\n")
    cli("build", "-t", "other", "-f", str(work / "Modelfile"), "--quiet")
    cli("rm", "other")
    orphan_dir = home / "store" / "blobs" / "sha256"
    (home / "store" / "ingest").mkdir(exist_ok=True)
    (home / "store" / "ingest" / "x.1.partial").write_bytes(b"stale")
    # A failed pull's lock file with no partial beside it (a registry review: counted as one).
    (home / "store" / "ingest" / f"{'a' * 64}.download.partial.lock").write_bytes(b"")
    noted = cli("verify")  # the store is fine; what an interrupted build left is said
    assert noted.code == 0 and "note: 1 partial file (5 B) left by interrupted builds" in noted.err, noted.err
    dry = cli("prune", "--grace", "0", "--dry-run")
    assert dry.code == 0 and "would remove" in dry.out
    assert (home / "store" / "ingest" / "x.1.partial").exists()
    done = cli("prune", "--grace", "0")
    assert done.code == 0 and not (home / "store" / "ingest" / "x.1.partial").exists()
    blob = next(orphan_dir.iterdir())
    blob.write_bytes(blob.read_bytes() + b"!")
    bad = cli("verify")
    assert bad.code == 2 and f"corrupt blob sha256:{blob.name}" in bad.out


def test_prune_history_frees_what_only_earlier_images_of_a_name_hold(
    home: Path, work: Path, tmp_path: Path
) -> None:
    """An audit: rebuilding a name from new weights kept every earlier weights file for rollback,
    and prune freed none of them (only `rm NAME`, the current image too, did). Prune now says what
    history holds, and --history forgets it and frees it."""
    from tinygguf import write_tiny_llama

    builds = []
    for seed in (1, 2, 3):
        write_tiny_llama(work / "weights.gguf", seed=seed)
        (work / "Modelfile").write_text("FROM ./weights.gguf\n")
        builds.append(cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet").out.strip())
    assert len(set(builds)) == 3
    kept = cli("prune", "--grace", "0")
    assert kept.code == 0 and "removed 0 blobs" in kept.err
    # Each earlier image: its manifest, config, weights and Modelfile layer (FROM names the weights).
    assert "note: 8 blobs" in kept.err and "`prune --history`" in kept.err, kept.err
    before = store_snapshot(home)
    dry = cli("prune", "--grace", "0", "--history", "--dry-run")
    assert dry.code == 0 and "would remove 8 blobs" in dry.err and store_snapshot(home) == before
    done = cli("prune", "--grace", "0", "--history")
    assert done.code == 0 and "removed 8 blobs" in done.err and "note:" not in done.err
    history = json.loads(cli("history", "m", "--json").out)
    assert [(h["digest"], h["current"]) for h in history] == [(builds[-1], True)]
    assert cli("verify").code == 0
    assert cli("rollback", "m").code == 1, "nothing earlier to return to"


def test_verify_names_the_images_of_a_corrupt_blob_and_fix_lets_a_rebuild_restore_it(
    home: Path, work: Path
) -> None:
    digest = cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet").out.strip()
    manifest = json.loads((home / "store" / "blobs" / "sha256" / digest[7:]).read_bytes())
    weights = next(layer["digest"] for layer in manifest["layers"] if "weight" in layer["mediaType"])
    blob = home / "store" / "blobs" / "sha256" / weights[7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))

    bad = cli("verify")
    assert bad.code == 2 and f"corrupt blob {weights}" in bad.out and "(needed by m:latest)" in bad.out
    assert "verify --fix" in bad.err
    # While the corrupt blob is there, the build takes the layer as present: no repair.
    cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet")
    assert cli("verify").code == 2
    fixed = cli("verify", "--fix")
    assert fixed.code == 2 and "Deleted 1 corrupt blob;" in fixed.err and not blob.exists()
    assert f"missing blob {weights} (needed by m:latest)" in cli("verify").out
    rebuilt = cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet")
    assert rebuilt.code == 0 and rebuilt.out.strip() == digest
    assert cli("verify").code == 0


def test_verify_names_an_earlier_image_as_such_and_says_how_to_forget_it(home: Path, work: Path) -> None:
    """A README review: damage to a tag's earlier image (history, for rollback) was blamed on the
    tag, whose current image was fine, with advice (rm it, pull again) that could not mend it."""
    (work / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM the first\n")
    first = cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet").out.strip()
    (work / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM the second\n")
    cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet")
    system = sha256_digest(b"the first")
    (home / "store" / "blobs" / "sha256" / system[7:]).unlink()

    bad = cli("verify")
    earlier = f"m:latest@{first[:19]}…"
    assert bad.code == 2 and f"missing blob {system} (needed by {earlier})" in bad.out, bad.out
    assert "build or pull again" not in bad.err.lower(), bad.err
    assert f"orget earlier images of a tag with `modelyard prune --history`: {earlier}" in bad.err, bad.err
    assert cli("show", "m").code == 0, "the tag's current image is whole"
    assert cli("prune", "--history").code == 0
    assert cli("verify").code == 0


def test_help_explains_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "build", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "--quantize" in proc.stdout and "Modelfile" in proc.stdout


@pytest.mark.gemma
def test_sigkill_mid_build_leaves_nothing_verify_flags(tmp_path: Path, gemma_gguf: Path) -> None:
    """Kill -9 while the 250 MB weights are being copied; the store stays consistent and a rerun
    completes."""
    work = tmp_path / "w"
    work.mkdir()
    os.symlink(gemma_gguf, work / "gemma.gguf")
    (work / "Modelfile").write_text("FROM ./gemma.gguf\n")
    env = {**os.environ, "MODELYARD_HOME": str(tmp_path / "home")}
    env.pop("SOURCE_DATE_EPOCH", None)
    command = [
        sys.executable,
        "-m",
        "modelyard.cli",
        "build",
        "-t",
        "g",
        "-f",
        str(work / "Modelfile"),
        "--quiet",
    ]
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ingest = tmp_path / "home" / "store" / "ingest"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partials = list(ingest.glob("*.partial")) if ingest.exists() else []
        if partials and partials[0].stat().st_size > 20_000_000:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the build never started writing weights")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelyard.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True
        )

    verify = run("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(run("list", "--json").stdout)["models"] == []
    rerun = run(*command[3:])
    assert rerun.returncode == 0, rerun.stderr
    assert run("verify").returncode == 0
    assert run("prune", "--grace", "0").returncode == 0
    assert list(ingest.glob("*.partial")) == []


def test_show_modelfile_output_builds_the_same_image(home: Path, work: Path, tmp_path: Path) -> None:
    (work / "Modelfile").write_text(
        'FROM ./weights.gguf\nADAPTER ./lora.gguf\nTEMPLATE """{{ .System }} {{ .Prompt }}"""\n'
        "SYSTEM be brief\nPARAMETER stop a\nPARAMETER stop b\nMESSAGE user hi\nLICENSE MIT\n"
    )
    digest = cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet").out.strip()
    printed = cli("show", "m", "--modelfile")
    assert printed.code == 0 and printed.out.startswith("# Modelfile generated by")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "Modelfile").write_text(printed.out)
    again = cli("build", "-t", "m2", "-f", str(elsewhere / "Modelfile"), "--quiet")
    assert again.code == 0 and again.out.strip() == digest


def test_show_modelfile_header_advice_keeps_the_adapters_once(home: Path, work: Path, tmp_path: Path) -> None:
    """The header tells how to build on the image by name; doing what it says must not stack
    the image's adapters a second time (FROM an image inherits them, ADAPTER adds)."""
    (work / "Modelfile").write_text("FROM ./weights.gguf\nADAPTER ./lora.gguf\nSYSTEM be brief\n")
    cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet")
    printed = cli("show", "m", "--modelfile").out
    assert "delete the ADAPTER lines" in printed
    followed = [
        "FROM m" if line.startswith("FROM ") else line
        for line in printed.splitlines()
        if not line.startswith("ADAPTER ")
    ]
    (tmp_path / "Derived").write_text("\n".join(followed) + "\nSYSTEM be briefer\n")
    assert cli("build", "-t", "derived", "-f", str(tmp_path / "Derived"), "--quiet").code == 0
    shown = json.loads(cli("show", "derived", "--json").out)
    assert shown["adapters"] == json.loads(cli("show", "m", "--json").out)["adapters"]
    assert len(shown["adapters"]) == 1 and shown["system"] == "be briefer"


def test_yaml_values_without_a_modelfile_spelling_build_and_show_in_yaml(
    home: Path, work: Path, tmp_path: Path
) -> None:
    """A line ending in \"\"\" (a docstring example) and an empty stop list have no Modelfile spelling;
    a build from the YAML form keeps them, and `show --modelfile` prints a YAML form that rebuilds."""
    system = 'Use docstrings:\n"""\nSummary.\n"""\nThanks'
    (work / "Modelfile.yaml").write_text(
        yaml.safe_dump({"from": "./weights.gguf", "system": system, "parameters": {"stop": []}})
    )
    built = cli("build", "-t", "doc", "-f", str(work / "Modelfile.yaml"), "--quiet")
    assert built.code == 0, built.err
    shown = json.loads(cli("show", "doc", "--json").out)
    assert shown["system"] == system and shown["parameters"] == {"stop": []}
    printed = cli("show", "doc", "--modelfile")
    assert printed.code == 0 and "in the YAML form" in printed.out
    (tmp_path / "again.yaml").write_text(printed.out)
    again = cli("build", "-t", "doc2", "-f", str(tmp_path / "again.yaml"), "--quiet")
    assert again.code == 0 and again.out.strip() == built.out.strip()


def test_list_shows_the_healthy_images_beside_a_damaged_one(home: Path, work: Path) -> None:
    broken = cli("build", "-t", "broken", "-f", str(work / "Modelfile"), "--quiet").out.strip()
    (work / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM other\n")
    cli("build", "-t", "fine", "-f", str(work / "Modelfile"), "--quiet")
    (home / "store" / "blobs" / "sha256" / broken[7:]).unlink()  # its manifest
    listed = cli("list")
    assert listed.code == 0 and "fine:latest" in listed.out and "broken" in listed.out
    assert "damaged: broken:latest" in listed.err
    rows = {r["name"]: r for r in json.loads(cli("list", "--json").out)["models"]}
    assert rows["fine:latest"]["size"] > 0 and rows["broken:latest"]["size"] is None
    assert "missing" in rows["broken:latest"]["problem"]
    # A layer gone (verify --fix deleted a corrupt one) makes an image broken too, not only its manifest.
    (work / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM a system of its own\n")
    cli("build", "-t", "layerless", "-f", str(work / "Modelfile"), "--quiet")
    system = sha256_digest(b"a system of its own")
    (home / "store" / "blobs" / "sha256" / system[7:]).unlink()
    rows = {r["name"]: r for r in json.loads(cli("list", "--json").out)["models"]}
    assert rows["layerless:latest"]["size"] is None and system in rows["layerless:latest"]["problem"]
    # Reading it is an error of a damaged store: exit 2, as verify's.
    # It names the image and what to do (a README review: only the digest was said).
    for how in ([], ["--system"]):
        shown = cli("show", "layerless", *how)
        assert (
            shown.code == 2
            and f"blob {system} is missing from the store (needed by layerless:latest)" in (shown.err)
        )
        assert "`modelyard verify` says what is wrong and how to repair it" in shown.err
    # A small blob whose bytes changed is told, never shown (read whole, it is checked each time).
    (work / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM be brief\n")
    cli("build", "-t", "tampered", "-f", str(work / "Modelfile"), "--quiet")
    (home / "store" / "blobs" / "sha256" / sha256_digest(b"be brief")[7:]).write_bytes(b"be evil")
    shown = cli("show", "tampered", "--system")
    assert shown.code == 2 and "be evil" not in shown.out and "verify --fix" in shown.err, shown


def test_cli_input_errors_outside_any_command(
    home: Path, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in ("abc", "-1", "99999999999999", "²"):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
        result = cli("list")
        assert result.code == 1 and "$SOURCE_DATE_EPOCH must be whole seconds" in result.err
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    two_names = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "build", "foo", "-t", "bar", "-f", str(work / "Modelfile")],
        capture_output=True,
        text=True,
    )
    assert two_names.returncode == 2 and "build got two names, 'foo' and -t 'bar'" in two_names.stderr


def test_a_reader_that_goes_away_stops_the_cli_quietly(home: Path, work: Path) -> None:
    cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet")
    reader, writer = os.pipe()
    os.close(reader)  # `| head` that has already exited
    try:
        shown = subprocess.run(
            [sys.executable, "-m", "modelyard.cli", "show", "m", "--modelfile"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(writer)
    assert shown.returncode == 141 and shown.stderr == ""


def as_a_user(home: Path, *args: str) -> Result:
    """The CLI in a process that file modes bind: root without the capabilities that bypass them."""
    drop = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "modelyard", *args],
        env={**os.environ, "MODELYARD_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def test_a_manifest_no_one_may_read_hides_no_other_image(home: Path, work: Path) -> None:
    """A store review: one manifest blob of mode 000 made `list` fail for the whole store, stopped
    `verify` at that blob with no report, and `rm` of another image said a bare "Permission
    denied". Each now names the file, and list and verify go on with the rest."""
    assert cli("build", "-f", str(work / "Modelfile"), "good").code == 0
    (work / "Other").write_text("FROM ./weights.gguf\nSYSTEM other\n")
    bad = cli("build", "--quiet", "-f", str(work / "Other"), "bad").out.strip()
    manifest = home / "store" / "blobs" / "sha256" / bad.removeprefix("sha256:")
    manifest.chmod(0)
    try:
        listed = as_a_user(home, "list")
        verified = as_a_user(home, "verify")
        removed = as_a_user(home, "rm", "good")
    finally:
        manifest.chmod(0o644)
    assert listed.code == 0, listed.err
    good, broken = (line.split() for line in sorted(listed.out.splitlines()[1:], reverse=True))
    assert (
        good[0] == "good:latest"
        and good[3] == "KB"  # a size: read
        and broken[:3][::2] == ["bad:latest", "broken"]
    )
    assert verified.code == 2
    assert f"unreadable blob {manifest}: cannot be read (Permission denied). Check its owner" in verified.out
    assert "Run `modelyard verify`" not in verified.out, "verify's own report sends nobody to verify"
    # Not "build again" alone: the file is there, and a build would take it as stored.
    assert (
        "Make the unreadable files above readable, or remove them, then build or pull again: bad"
        in verified.err
    )
    assert removed.code == 2 and str(manifest) in removed.err and "nothing was deleted" in removed.err
    assert "good:latest" in cli("list").out and cli("verify").code == 0


def test_verify_reports_a_damaged_index_without_failing_itself(home: Path, work: Path) -> None:
    cli("build", "-t", "m", "-f", str(work / "Modelfile"), "--quiet")
    (home / "store" / "index.json").write_text("{not json")
    listed = cli("list")
    assert listed.code == 2 and "repair its JSON or restore it from a backup" in listed.err
    checked = cli("verify", "--fix")
    assert checked.code == 2 and "unreadable index:" in checked.out and "nothing was deleted" in checked.err


def test_quantize_keeps_llama_cpp_log_off_the_terminal(work: Path, home: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "modelyard.cli", "build", "-t", "q", "-f", str(work / "Modelfile"),
         "--quantize", "Q8_0", "--quiet"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert built.stderr == "" and built.stdout.startswith("sha256:")


@pytest.mark.parametrize(
    ("stop", "returncode"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)],
    ids=["ctrl-c", "sigterm", "sigkill"],
)
def test_a_build_stopped_while_quantizing_stops_at_once_and_keeps_nothing(
    tmp_path: Path, home: Path, stop: signal.Signals, returncode: int
) -> None:
    """llama.cpp's quantizer drops a Ctrl-C raised in its log callback and runs on; the build must
    stop anyway, as it does in every other phase. An audit: SIGTERM (`kill`, `timeout`, a
    cancelled CI job) and SIGKILL left the quantizer child running to the end, its whole output
    kept in the store's ingest directory."""
    from tinygguf import write_tiny_llama

    # Large enough that quantizing takes seconds (3 s on 2 cores), not the fraction it is given.
    weights = write_tiny_llama(
        tmp_path / "big.gguf", n_vocab=16000, n_embd=1024, n_ff=2816, n_layer=2, n_head=8, n_head_kv=8
    )
    (tmp_path / "Modelfile").write_text(f"FROM {weights}\n")
    assert cli("build", "-t", "before", "-f", str(tmp_path / "Modelfile"), "--quiet").code == 0
    before = store_snapshot(home)
    build = subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli", "build", "-t", "q", "-f", str(tmp_path / "Modelfile"),
         "--quantize", "Q4_K_M"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert build.stdout is not None
    for line in build.stdout:
        if line.startswith("quantizing"):
            break
    time.sleep(0.3)
    interrupted = time.monotonic()
    build.send_signal(stop)
    build.communicate(timeout=60)
    assert build.returncode == returncode
    assert time.monotonic() - interrupted < 1.5
    # No image, no blob, no partial file: killed outright, the quantizer removes its own output
    # as soon as it finds its parent gone.
    deadline = time.monotonic() + 10
    while store_snapshot(home) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store_snapshot(home) == before


def test_show_lists_the_messages(home: Path, work: Path) -> None:
    (work / "Chat").write_text('FROM ./weights.gguf\nMESSAGE user "hello there"\nMESSAGE assistant ahoy\n')
    assert cli("build", "-t", "chat", "-f", str(work / "Chat"), "--quiet").code == 0
    shown = cli("show", "chat")
    assert shown.code == 0
    messages = shown.out.split("  Messages\n")[1].splitlines()[:2]
    assert [line.split(maxsplit=1) for line in messages] == [["user", "hello there"], ["assistant", "ahoy"]]
