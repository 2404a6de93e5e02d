"""Run configuration: a YAML file per method, dotted ``key=value`` overrides, the resolved copy saved.

Overrides parse their value as YAML (``epochs=5``, ``cut=3``, ``dataset.subset=512``,
``dataset.imbalance=true``, ``augment.crop_scale=[0.2,1.0]``); a key that is not in the file is
an error (a typo must not silently train the default).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from normprobe.errors import NormprobeError

CONFIG_DIR = Path(__file__).parent / "configs"

# Keys a config may leave out; everything else must be present in the YAML.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",
    "precision": "fp32",
    "threads": None,
    "channels_last": True,
    "accumulate": 1,
    "cut": 1.0,
    "gradscale": 0.0,
    "dataset": {
        "name": "cifar10",
        "split": "train",
        "test_split": "test",
        "subset": None,
        "imbalance": False,
        "data_root": None,
    },
    "preprocess": {"mean": None, "std": None},
    "schedule": {"warmup_epochs": 10, "min_lr": 0.0, "preset": "default"},
    "monitor": {
        "every": 1,
        "k": 200,
        "temperature": 0.1,
        "train_subset": None,
        "subset": None,
        "final_full": False,
        "batch_size": 512,
    },
    "checkpoint": {"every": 1, "keep_last": 2},
    "distributed": {"sync_bn": False, "backend": None},
    "progress": True,
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config_path(name: str | Path) -> Path:
    """A path, or the name of a bundled config (``simclr_cifar10``)."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{Path(name).stem}.yaml"
    if bundled.is_file():
        return bundled
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise NormprobeError(f"{name}: no such config file (bundled configs: {known})")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config, fill the defaults, apply ``key=value`` overrides."""
    path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise NormprobeError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise NormprobeError(f"{path}: a config must be a mapping of keys")
    config = _merge(DEFAULTS, raw)
    for item in overrides:
        apply_override(config, item)
    validate(config)
    return config


def apply_override(config: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise NormprobeError(f"override {item!r} is not of the form key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise NormprobeError(f"override {item!r}: cannot parse the value: {err}") from err
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise NormprobeError(f"override {item!r}: {part!r} is not a section of the config")
        node = node[part]
    if parts[-1] not in node:
        raise NormprobeError(
            f"override {item!r}: unknown key {key!r} (known here: {', '.join(sorted(node))})"
        )
    node[parts[-1]] = value


def validate(config: dict[str, Any]) -> None:
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise NormprobeError(f"config: {message}")

    for key in ("method", "epochs", "batch_size", "out_dir", "backbone", "optimizer", "method_options"):
        need(key in config, f"missing key {key!r}")
    need(isinstance(config["epochs"], int) and config["epochs"] >= 1, "epochs must be an integer >= 1")
    need(
        isinstance(config["batch_size"], int) and config["batch_size"] >= 2,
        "batch_size must be an integer >= 2",
    )
    need(
        isinstance(config["accumulate"], int) and config["accumulate"] >= 1,
        "accumulate must be an integer >= 1",
    )
    need(float(config["cut"]) > 0, "cut must be > 0 (1 = no cut-initialisation)")
    need(float(config["gradscale"]) >= 0, "gradscale (the power p) must be >= 0 (0 = off)")
    need(config["precision"] in ("fp32", "bf16"), "precision must be fp32 or bf16")
    need(
        config["schedule"]["preset"] in ("default", "gradscale"),
        "schedule.preset must be 'default' or 'gradscale'",
    )
    need(
        config["optimizer"].get("name") in ("sgd", "lars", "adamw"),
        "optimizer.name must be sgd, lars or adamw",
    )
    subset = config["dataset"]["subset"]
    need(
        subset is None or (isinstance(subset, int) and subset >= 2),
        "dataset.subset must be null or an integer >= 2",
    )


def save_config(config: dict[str, Any], out_dir: Path) -> None:
    """The resolved config beside the checkpoints, as YAML (for people) and JSON (for programs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("config.yaml", yaml.safe_dump(config, sort_keys=False)),
        ("config.json", json.dumps(config, indent=2)),
    ):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)
