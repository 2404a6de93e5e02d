"""Run configuration: a YAML file per method, dotted ``key=value`` overrides, the resolved copy saved.

Overrides parse their value as YAML (``epochs=5``, ``cut=3``, ``dataset.subset=512``,
``dataset.imbalance=true``, ``augment.crop_scale=[0.2,1.0]``); a key that is not in the file is
an error (a typo must not silently train the default).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from normprobe.atomic import atomic_write
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


@dataclass(frozen=True)
class Range:
    """An interval of allowed values, with the words an error message uses for it."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return "of any value"
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


ANY, POSITIVE, NON_NEGATIVE = Range(-math.inf), Range(0, open_low=True), Range(0)
PROBABILITY, MOMENTUM = Range(0, 1), Range(0, 1, open_high=True)

# Dotted keys; "?" at the end: the key may be absent (it belongs to some methods or optimizers).
# SCALARS: key -> (kind, allowed range), where kind "int|null" allows null as well.
SCALARS: dict[str, tuple[str, Range]] = {
    "epochs": ("int", Range(1)),
    "batch_size": ("int", Range(2)),
    "accumulate": ("int", Range(1)),
    "seed": ("int", Range(0)),
    "threads": ("int|null", Range(1)),
    "cut": ("number", POSITIVE),
    "gradscale": ("number", NON_NEGATIVE),
    "backbone.width?": ("int", Range(1)),
    "optimizer.lr": ("number", POSITIVE),
    "optimizer.weight_decay?": ("number", NON_NEGATIVE),
    "optimizer.momentum?": ("number", MOMENTUM),
    "optimizer.eta?": ("number", POSITIVE),
    "schedule.warmup_epochs": ("number", NON_NEGATIVE),
    "schedule.min_lr": ("number", NON_NEGATIVE),
    "augment.flip_p": ("number", PROBABILITY),
    "augment.jitter_p": ("number", PROBABILITY),
    "augment.gray_p": ("number", PROBABILITY),
    "dataset.subset": ("int|null", Range(2)),
    "monitor.every": ("int", Range(0)),
    "monitor.k": ("int", Range(1)),
    "monitor.temperature": ("number", POSITIVE),
    "monitor.train_subset": ("int|null", Range(1)),
    "monitor.subset": ("int|null", Range(1)),
    "monitor.batch_size": ("int", Range(1)),
    "checkpoint.every": ("int", Range(1)),
    "checkpoint.keep_last": ("int", Range(0)),
    "method_options.temperature?": ("number", POSITIVE),
    "method_options.momentum?": ("number", PROBABILITY),
    "method_options.tau_base?": ("number", PROBABILITY),
    **{
        f"method_options.{key}?": ("int", Range(1))
        for key in ("proj_hidden", "out_dim", "proj_dim", "pred_hidden", "mlp_hidden", "queue_size")
    },
}
BOOLEANS = (
    "channels_last",
    "progress",
    "dataset.imbalance",
    "monitor.final_full",
    "distributed.sync_bn",
    "optimizer.scale_lr?",
    "optimizer.exclude_bias_norm?",
    "method_options.symmetric?",
    "method_options.fix_predictor_lr?",
)
CHOICES: dict[str, tuple[Any, ...]] = {
    "precision": ("fp32", "bf16"),
    "schedule.preset": ("default", "gradscale"),
    "optimizer.name": ("sgd", "lars", "adamw"),
    "distributed.backend": (None, "gloo", "nccl", "mpi"),
    "method_options.head_norm?": ("bn", "ln", "none"),
    "backbone.stem?": ("cifar", "imagenet"),
}
STRINGS = ("out_dir", "device", "backbone.name", "dataset.name", "dataset.split", "dataset.test_split")
SECTIONS = (
    "backbone",
    "method_options",
    "optimizer",
    "schedule",
    "augment",
    "dataset",
    "preprocess",
    "monitor",
    "checkpoint",
    "distributed",
)


def _fail(key: str, what: str, value: Any) -> NoReturn:
    raise NormprobeError(f"config: {key} must be {what} (got {value!r})")


def _lookup(config: dict[str, Any], key: str) -> tuple[dict[str, Any], str] | None:
    """The section holding ``key`` and its last part; None for an absent optional key (``name?``)."""
    optional = key.endswith("?")
    parts = key.rstrip("?").split(".")
    node = config
    for part in parts[:-1]:
        node = node[part]
    if parts[-1] not in node:
        if optional:
            return None
        raise NormprobeError(f"config: missing key {key.rstrip('?')!r}")
    return node, parts[-1]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_number(value: Any) -> float | None:
    """``value`` as a finite number, or None. YAML 1.1 reads ``1e-3`` (no dot) as a string, so a
    string that spells a number counts as that number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    return None


def _check_scalar(config: dict[str, Any], key: str, kind: str, allowed: Range) -> None:
    found = _lookup(config, key)
    if found is None:
        return
    node, name = found
    value, key = node[name], key.rstrip("?")
    if value is None and kind.endswith("|null"):
        return
    if kind.startswith("int"):
        if not _is_int(value) or value not in allowed:
            _fail(key, f"an integer {allowed}", value)
        return
    number = _as_number(value)
    if number is None or number not in allowed:
        _fail(key, f"a number {allowed}", value)
    node[name] = number  # "1e-3" is stored as the number it spells


def _check_numbers(key: str, value: Any, length: int, allowed: Range) -> list[float]:
    numbers = [_as_number(v) for v in value] if isinstance(value, list) else []
    if len(numbers) != length or any(n is None or n not in allowed for n in numbers):
        _fail(key, f"a list of {length} numbers {allowed}", value)
    return [float(n) for n in numbers if n is not None]


def _entries(config: dict[str, Any], keys: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of each of ``keys`` that is present (a missing required one is an error)."""
    for key in keys:
        if (found := _lookup(config, key)) is not None:
            yield key.rstrip("?"), found[0][found[1]]


def validate(config: dict[str, Any]) -> None:
    """Reject a config that would fail, or silently train something else, before any work is done."""
    from normprobe.training.methods import METHODS  # the registry imports the models; config stays light

    for key in ("method", "epochs", "batch_size", "out_dir", *SECTIONS):
        if key not in config:
            raise NormprobeError(f"config: missing key {key!r}")
    for key in SECTIONS:
        if not isinstance(config[key], dict):
            _fail(key, "a mapping of keys", config[key])
    if config["method"] not in METHODS:
        _fail("method", f"one of {', '.join(METHODS)}", config["method"])
    for key, (kind, allowed) in SCALARS.items():
        _check_scalar(config, key, kind, allowed)
    for key, value in _entries(config, BOOLEANS):
        if not isinstance(value, bool):
            _fail(key, "true or false", value)
    for key, choices in CHOICES.items():
        for name, value in _entries(config, (key,)):
            if value not in choices:
                _fail(name, f"one of {', '.join(map(str, choices))}", value)
    for key, value in _entries(config, STRINGS):
        if not isinstance(value, str) or not value:
            _fail(key, "a non-empty string", value)
    for key, value in _entries(config, ("dataset.data_root",)):
        if value is not None and not isinstance(value, str):
            _fail(key, "null or a folder", value)

    augment = config["augment"]
    (_, crop), (_, jitter) = _entries(config, ("augment.crop_scale", "augment.jitter"))
    low, high = _check_numbers("augment.crop_scale", crop, 2, Range(0, 1, open_low=True))
    if low > high:
        _fail("augment.crop_scale", "[lower, upper] with lower <= upper", crop)
    augment["crop_scale"] = [low, high]
    augment["jitter"] = _check_numbers("augment.jitter", jitter, 4, NON_NEGATIVE)
    if augment["jitter"][3] > 0.5:  # a hue shift is a fraction of the colour wheel either way
        _fail("augment.jitter", "[brightness, contrast, saturation, hue] with hue <= 0.5", jitter)
    for key, value in _entries(config, ("optimizer.betas?",)):
        _check_numbers(key, value, 2, MOMENTUM)
    for key, value in _entries(config, ("preprocess.mean", "preprocess.std")):
        if value is not None:
            _check_numbers(key, value, 3, POSITIVE if key.endswith("std") else ANY)


def save_config(config: dict[str, Any], out_dir: Path) -> None:
    """The resolved config beside the checkpoints, as YAML (for people) and JSON (for programs)."""
    as_yaml, as_json = yaml.safe_dump(config, sort_keys=False), json.dumps(config, indent=2)
    atomic_write(out_dir / "config.yaml", lambda tmp: tmp.write_text(as_yaml))
    atomic_write(out_dir / "config.json", lambda tmp: tmp.write_text(as_json))
