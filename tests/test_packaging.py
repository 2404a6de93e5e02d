"""Installed, normprobe adds one top-level import name: training/, app/ and data_manifests/ are
normprobe.training, normprobe.app and normprobe.data_manifests, never top-level packages that
would shadow (or be shadowed by) a user's own ``training`` or ``app``."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PROBE = """
import importlib.util, json
import normprobe.training, normprobe.app, normprobe.data_manifests, normprobe.training.methods
print(json.dumps({name: importlib.util.find_spec(name) is not None for name in ("training", "app", "data_manifests")}))
"""


def test_only_normprobe_is_a_top_level_import_name(tmp_path: Path) -> None:
    # run outside the repository, so that its folders are not on sys.path as the current directory
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {"training": False, "app": False, "data_manifests": False}


def test_the_training_command_is_normprobe_train() -> None:
    scripts = {
        e.name for e in metadata.entry_points(group="console_scripts") if e.value.startswith("normprobe")
    }
    assert scripts == {"normprobe"}
    out = subprocess.run(
        [sys.executable, "-m", "normprobe", "train", "--help"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("usage: normprobe train") and "--config" in out.stdout
