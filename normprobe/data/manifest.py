"""Declarative dataset descriptions, read from the top-level ``data_manifests/`` folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from normprobe.errors import NormprobeError


@dataclass(frozen=True)
class Manifest:
    """One dataset (``kind: images``) or label set (``kind: labels``) as its YAML file describes it."""

    name: str
    kind: str
    description: str
    raw: dict[str, Any] = field(repr=False)

    @property
    def splits(self) -> dict[str, dict[str, Any]]:
        return self.raw.get("splits", {})

    @property
    def mirror(self) -> dict[str, Any]:
        return self.raw.get("mirror", {})

    @property
    def upstream(self) -> dict[str, Any]:
        return self.raw.get("upstream", {})

    @property
    def license(self) -> str:
        return self.raw.get("license", "")

    def mirror_files(self) -> dict[str, str]:
        """Every local mirror file this manifest names, mapped to its sha256."""
        if self.kind == "labels":
            return {self.mirror["file"]: self.mirror["sha256"]}
        files = {spec["file"]: spec["sha256"] for spec in self.mirror.values()}
        classes_from = self.raw.get("classes_from", {})
        if "sha256" in classes_from:
            files[classes_from["file"]] = classes_from["sha256"]
        return files


def _manifest_files() -> dict[str, Any]:
    folder = resources.files("normprobe.data_manifests")
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def manifest_names(kind: str | None = None) -> list[str]:
    """Names of all manifests, optionally only those of one kind (``images`` or ``labels``)."""
    names = sorted(_manifest_files())
    if kind is None:
        return names
    return [n for n in names if load_manifest(n).kind == kind]


def load_manifest(name: str) -> Manifest:
    files = _manifest_files()
    if name not in files:
        raise NormprobeError(f"unknown dataset {name!r}; known: {', '.join(sorted(files))}")
    raw = yaml.safe_load(files[name].read_text())
    return Manifest(name=raw["name"], kind=raw["kind"], description=raw["description"], raw=raw)
