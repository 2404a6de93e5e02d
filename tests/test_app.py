"""The explorer's page logic: plain functions directly, the page through Streamlit's AppTest.

AppTest runs app/main.py in this process on a real results folder (``analyzed_results``) and
reports every element and exception without a browser; tests/test_app_browser.py covers the browser.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from normprobe.app import explore

from normprobe.errors import NormprobeError

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
TIMEOUT = 120


# --------------------------------------------------------------------------- plain functions


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": ["c100", "c10", "c10", "c10", "c10", "c10", "c100"],
            "split": ["test", "test", "test", "test", "train", "train", "test"],
            "index": [7, 3, 1, 9, 0, 5, 2],
            "role": ["ood", "id-test", "id-test", "id-test", "id-train", "id-train", "ood"],
            "label": [40, 1, 0, 1, 0, -1, 41],
            "label_name": ["lamp", "car", "plane", "car", "plane", "", "lion"],
            "norm_z": [0.5, 2.0, 1.0, 3.0, 4.0, 0.1, 0.2],
            "knn_pred": [1, 1, 1, 0, 0, 0, 0],
            "knn_correct": pd.array([None, True, False, False, True, None, None], dtype="boolean"),
        }
    )


def test_groups_come_id_train_first_then_id_test_then_ood(table: pd.DataFrame) -> None:
    found = explore.groups(table)
    assert [(g.dataset, g.split, g.role, g.n) for g in found] == [
        ("c10", "train", "id-train", 2),
        ("c10", "test", "id-test", 3),
        ("c100", "test", "ood", 2),
    ]
    assert found[1].label == "c10/test (id-test)"


def test_select_filters_by_group_class_and_correctness(table: pd.DataFrame) -> None:
    test = explore.groups(table)[1]
    assert explore.select(table, test)["index"].tolist() == [3, 1, 9]
    assert explore.select(table, test, labels=[1])["index"].tolist() == [3, 9]
    assert explore.select(table, test, correctness="correct")["index"].tolist() == [3]
    assert explore.select(table, test, labels=[1], correctness="incorrect")["index"].tolist() == [9]
    ood = explore.groups(table)[2]
    # unknown correctness (OOD rows) is neither correct nor incorrect
    assert explore.select(table, ood, correctness="incorrect").empty
    assert len(explore.select(table, ood, correctness="all")) == 2


def test_ranked_and_rank_window(table: pd.DataFrame) -> None:
    by_norm = explore.ranked(table, "norm_z")
    assert by_norm["norm_z"].tolist() == sorted(table["norm_z"])
    assert explore.rank_window(by_norm, 2, 3)["norm_z"].tolist() == [0.5, 1.0, 2.0]
    # a window past the end is clamped to the last full window, a negative start to 0
    assert explore.rank_window(by_norm, 99, 3)["norm_z"].tolist() == [2.0, 3.0, 4.0]
    assert explore.rank_window(by_norm, -4, 2)["norm_z"].tolist() == [0.1, 0.2]


def test_class_names_are_sorted_and_skip_unknown(table: pd.DataFrame) -> None:
    assert explore.class_names(table) == {0: "plane", 1: "car", 40: "lamp", 41: "lion"}
    assert explore.id_classes(table) == {0: "plane", 1: "car"}


def test_positions_in_maps_original_indices_and_rejects_absent_ones() -> None:
    index = np.array([10, 3, 7, 0])  # a subset / partial mirror: original positions, unsorted
    assert explore.positions_in(index, np.array([7, 10, 0])).tolist() == [2, 0, 3]
    with pytest.raises(NormprobeError, match="not in the dataset"):
        explore.positions_in(index, np.array([3, 11]))


def test_upscale_repeats_pixels_exactly() -> None:
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    big = explore.upscale(images, 12)
    assert big.shape == (2, 12, 12, 3)
    assert (big[:, ::3, ::3] == images).all() and (big[:, 2::3, 1::3] == images).all()


def test_caption_names_label_norm_and_prediction(table: pd.DataFrame) -> None:
    classes = explore.id_classes(table)
    assert explore.caption(table.iloc[1], "norm_z", classes) == "car · z 2 · kNN car ✓"
    assert explore.caption(table.iloc[3], "norm_z", classes) == "car · z 3 · kNN plane ✗"
    assert explore.caption(table.iloc[0], "norm_z", classes) == "lamp · z 0.5 · kNN car"
    assert explore.caption(table.iloc[5], "norm_z", classes).startswith("unlabelled · z 0.1")


def test_grid_and_csv(table: pd.DataFrame) -> None:
    assert explore.grid(5, 2) == [[0, 1], [2, 3], [4]]
    assert explore.grid(0, 3) == []
    back = pd.read_csv(io.BytesIO(explore.to_csv(table)))
    assert back.columns.tolist() == table.columns.tolist() and len(back) == len(table)
    assert back["knn_correct"].isna().sum() == 3


# --------------------------------------------------------------------------- the page (AppTest)


def _app(monkeypatch: pytest.MonkeyPatch, results: Path | str | None, section: str | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", [APP] + (["--results", str(results)] if results is not None else []))
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if section:
        app.query_params["section"] = section  # as in a shared URL: ?section=Exemplars
    return app.run()


def _no_failure(app) -> None:
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]


def _captions(app, key: str) -> list[str]:
    """Captions of the images inside the container keyed ``key`` (one image and one caption per sample)."""
    grid = app.get_by_key(key)
    assert len(grid.image) == len(grid.caption)
    return [caption.value for caption in grid.caption]


def test_without_a_folder_the_page_asks_for_one(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(monkeypatch, None)
    _no_failure(app)
    assert "Enter a results folder" in app.info[0].value


@pytest.mark.parametrize("damage", ["missing", "not-json", "no-parquet", "bad-parquet", "no-norm-column"])
def test_a_missing_or_malformed_folder_is_a_message_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, analyzed_results: Path, damage: str
) -> None:
    folder = tmp_path / "results"
    if damage != "missing":
        shutil.copytree(analyzed_results, folder)
    if damage == "not-json":
        (folder / "run.json").write_text("{not json")
    elif damage == "no-parquet":
        (folder / "samples.parquet").unlink()
    elif damage == "bad-parquet":
        (folder / "samples.parquet").write_bytes(b"PAR1 this is not parquet")
    elif damage == "no-norm-column":
        run = json.loads((folder / "run.json").read_text())
        samples = pd.read_parquet(folder / "samples.parquet").drop(columns=[f"norm_{run['primary_head']}"])
        samples.to_parquet(folder / "samples.parquet")
    app = _app(monkeypatch, folder)
    assert not app.exception, [e.value for e in app.exception]
    assert len(app.error) == 1 and app.error[0].value.startswith("Cannot open the results folder:")
    assert not app.tabs


def test_every_invalid_path_gets_the_same_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, analyzed_results: Path
) -> None:
    """?results=ANY_PATH must not reveal whether a server path exists or what it holds."""
    (tmp_path / "secret.txt").write_text("x")
    damaged = tmp_path / "damaged"
    shutil.copytree(analyzed_results, damaged)
    (damaged / "run.json").write_text("{}")
    messages = set()
    for path in (tmp_path / "absent", tmp_path / "secret.txt", tmp_path, damaged, Path("/etc")):
        app = _app(monkeypatch, path)
        assert not app.exception, [e.value for e in app.exception]
        messages |= {e.value for e in app.error}
    assert len(messages) == 1, messages
    assert str(tmp_path) not in next(iter(messages))


CRAFTED = "![pixel](http://127.0.0.1:9/pixel.png) **bold** :red[red] <img src=x>"


def test_strings_from_run_json_render_as_text_not_markdown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, analyzed_results: Path
) -> None:
    folder = tmp_path / "results"
    shutil.copytree(analyzed_results, folder)
    run = json.loads((folder / "run.json").read_text())
    run["checkpoint"]["path"] = CRAFTED
    run["checkpoint"]["adapter"] = CRAFTED
    run["notes"] = [CRAFTED]
    (folder / "run.json").write_text(json.dumps(run))
    app = _app(monkeypatch, folder)
    _no_failure(app)
    shown = [e.value for e in (*app.markdown, *app.caption)]
    assert any("pixel" in text for text in shown), "the crafted strings are shown (as text)"
    for text in shown:
        assert "![" not in text and "**bold**" not in text and ":red[" not in text, text


def test_plain_escapes_markdown_and_control_characters() -> None:
    assert explore.plain("a*b_c") == "a\\*b\\_c"
    assert explore.plain("line\nbreak\x1b[31m") == "line break \\[31m"
    assert explore.plain("cat 0.708 · kNN dog") == "cat 0.708 · kNN dog"
    assert explore.plain("1. item") == "1\\. item" and explore.plain("- item") == "\\- item"


def test_every_section_renders_on_a_real_run(monkeypatch: pytest.MonkeyPatch, analyzed_results: Path) -> None:
    app = _app(monkeypatch, analyzed_results)
    _no_failure(app)
    assert [t.label for t in app.tabs] == ["Overview", "Norms", "Curves", "Exemplars", "Unfamiliar"]
    run = json.loads((analyzed_results / "run.json").read_text())
    assert app.sidebar.selectbox(key="head").value == run["primary_head"]
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Samples"] == f"{len(pd.read_parquet(analyzed_results / 'samples.parquet')):,}"
    ood_sets = {d["name"] + "/" + d["split"] for d in run["datasets"] if d["role"] == "ood"}
    shown = app.dataframe[0].value
    assert set(shown["ood set"]) == set(run["summary"]["ood"]) and len(ood_sets) == len(set(shown["ood set"]))

    app.query_params["section"] = "Norms"
    app.run()
    _no_failure(app)
    assert len(app.get("plotly_chart")) == 2

    app.query_params["section"] = "Curves"
    app.run()
    _no_failure(app)
    charts = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in app.get("plotly_chart")]
    assert any("kNN accuracy" in t for t in charts)
    assert any("ROC" in t for t in charts)
    assert any("human" in t.lower() for t in charts)


def test_exemplars_show_the_chosen_class_by_norm(
    monkeypatch: pytest.MonkeyPatch, analyzed_results: Path
) -> None:
    app = _app(monkeypatch, analyzed_results, "Exemplars")
    _no_failure(app)
    group = app.selectbox(key="exemplar-group").value
    assert group.role == "id-test"
    classes = app.selectbox(key="exemplar-class")
    first = classes.options[0]
    highest, lowest = _captions(app, "exemplars-highest"), _captions(app, "exemplars-lowest")
    assert len(highest) == len(lowest) == 8
    name = first.split(" (")[0]
    assert all(c.startswith(name) for c in highest + lowest)
    norm = lambda c: float(c.split(" · ")[1].split()[1])  # noqa: E731 - "label · z 1.23 · kNN ..."
    assert [norm(c) for c in highest] == sorted((norm(c) for c in highest), reverse=True)
    assert min(norm(c) for c in highest) >= max(norm(c) for c in lowest)

    classes.select_index(1).run()
    _no_failure(app)
    other = app.selectbox(key="exemplar-class").options[1].split(" (")[0]
    second = _captions(app, "exemplars-highest")
    assert other != name and len(second) == 8 and all(c.startswith(other) for c in second)

    window = _captions(app, "exemplars-rank")
    app.slider(key="exemplar-rank").set_value(0).run()
    lowest_window = _captions(app, "exemplars-rank")
    assert lowest_window != window and lowest_window[0].startswith("#0 · ")
    assert lowest_window[0].split(" · ", 1)[1] == _captions(app, "exemplars-lowest")[0]


def test_enlarge_opens_a_larger_view_with_the_details(
    monkeypatch: pytest.MonkeyPatch, analyzed_results: Path
) -> None:
    app = _app(monkeypatch, analyzed_results, "Exemplars")
    app.button(key="exemplars-highest-zoom-0").click().run()
    _no_failure(app)
    large = [i for i in app.get("image") if i.captions and "index" in i.captions[0]]
    assert len(large) == 1
    details = app.dataframe[-1].value
    assert {"knn_pred", "label_name"} <= set(details["field"])


def test_unfamiliar_samples_filter_and_export(
    monkeypatch: pytest.MonkeyPatch, analyzed_results: Path
) -> None:
    app = _app(monkeypatch, analyzed_results, "Unfamiliar")
    _no_failure(app)
    groups = app.selectbox(key="unfamiliar-group")
    test = next(i for i, g in enumerate(groups.options) if "id-test" in g)
    groups.select_index(test).run()
    app.number_input(key="unfamiliar-n").set_value(20).run()
    table = app.dataframe[0].value
    assert (
        len(table) == 20 and table["norm_" + app.sidebar.selectbox(key="head").value].is_monotonic_increasing
    )
    assert len(_captions(app, "unfamiliar-grid")) == 20

    wanted = app.multiselect(key="unfamiliar-classes").options[3]
    app.multiselect(key="unfamiliar-classes").select(wanted).run()
    app.radio(key="unfamiliar-correctness").set_value("incorrect").run()
    _no_failure(app)
    table = app.dataframe[0].value
    assert len(table) > 0 and set(table["label_name"]) == {wanted} and not table["knn_correct"].any()
    assert all(
        c.split(" · ", 1)[1].startswith(wanted) and c.endswith("✗") for c in _captions(app, "unfamiliar-grid")
    )
    assert app.get("download_button")


def test_a_data_root_without_the_images_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, analyzed_results: Path, tmp_path: Path
) -> None:
    app = _app(monkeypatch, analyzed_results, "Exemplars")
    app.sidebar.text_input(key="data-root").input(str(tmp_path)).run()
    assert not app.exception
    assert app.warning and "not available" in app.warning[0].value


def test_the_results_folder_can_come_from_the_url(
    monkeypatch: pytest.MonkeyPatch, analyzed_results: Path
) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", [APP])
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.query_params["results"] = str(analyzed_results)
    app.run()
    _no_failure(app)
    assert app.sidebar.text_input(key="results-dir").value == str(analyzed_results)
    assert [t.label for t in app.tabs][0] == "Overview"


def test_explore_refuses_what_is_not_a_results_folder_before_starting_a_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from normprobe.cli import main

    (tmp_path / "run.json").write_text("{}")
    assert main(["explore", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("normprobe: error:")


def test_explore_binds_to_localhost_unless_told() -> None:
    from normprobe.commands.explore import LOCALHOST, streamlit_command

    command = streamlit_command(Path("/r"), 8501, LOCALHOST)
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"


@pytest.fixture(scope="module")
def embedding_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder of `normprobe analyze` from seeded plain .npz embeddings: no checkpoint, no images."""
    from normprobe.cli import main

    work = tmp_path_factory.mktemp("embedding-run")
    rng = np.random.default_rng(0)
    for name, n in (("train", 120), ("test", 60), ("far", 40)):
        labels = rng.integers(0, 3, n)
        embeddings = rng.normal(size=(n, 8))
        embeddings[np.arange(n), labels] += 3.0
        np.savez(work / f"{name}.npz", embeddings=embeddings, **({"labels": labels} if name != "far" else {}))
    status = main(
        [
            "analyze",
            *("--id-train", str(work / "train.npz"), "--id-test", str(work / "test.npz")),
            *("--ood", str(work / "far.npz"), "--k", "10", "--ood-k", "5", "--min-bucket-count", "3"),
            *("--cache-dir", str(work / "cache"), "--out", str(work / "results"), "--quiet", "--no-report"),
        ]
    )
    assert status == 0
    return work / "results"


def test_a_run_from_embeddings_shows_its_inputs_and_says_it_has_no_images(
    monkeypatch: pytest.MonkeyPatch, embedding_results: Path
) -> None:
    app = _app(monkeypatch, embedding_results)
    _no_failure(app)
    assert {m.label: m.value for m in app.metric}["Method"] == "embedding input"
    assert any("Embedding input" in m.value and "no images" in m.value for m in app.markdown)
    assert set(app.dataframe[0].value["role"]) == {"id-train", "id-test", "ood"}  # the input files
    for section in ("Exemplars", "Unfamiliar"):
        app = _app(monkeypatch, embedding_results, section)
        _no_failure(app)
        assert app.info and all(i.value.startswith("No images: ") for i in app.info)
        assert not app.warning and not app.get("image")
        assert any({"index", "id"} <= set(frame.value.columns) for frame in app.dataframe)


@pytest.mark.parametrize("kind", ["checkpoint", "embeddings"])
def test_a_results_folder_from_normprobe_0_1_opens_in_every_section(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    folder = Path(__file__).parent / "data" / "results-v1" / kind
    for section in ("Overview", "Norms", "Curves", "Exemplars", "Unfamiliar"):
        app = _app(monkeypatch, folder, section)
        assert not app.exception, [e.value for e in app.exception]
    assert [t.label for t in app.tabs] == ["Overview", "Norms", "Curves", "Exemplars", "Unfamiliar"]
