"""`normprobe datasets list | verify`: what the manifests describe, what the data root holds, checksums."""

from __future__ import annotations

import argparse
from pathlib import Path

from normprobe.errors import NormprobeError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "datasets",
        help="list the known datasets and what the data root holds; verify mirror checksums",
        description="Datasets are described by manifests (data_manifests/*.yaml). normprobe reads each split "
        "from its local mirror file in the data root, else from torchvision's on-disk format there. "
        "Data root: --data-root, else $NORMPROBE_DATA, else ~/.cache/normprobe/data.",
    )
    actions = parser.add_subparsers(dest="datasets_action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="every manifest: kind, splits with sizes, local files, images actually available, source used",
        description="One line per dataset split (and per label set): its size, the mirror file and whether it "
        "exists, how many images are actually available (a partial mirror has fewer), and the source a "
        "command would read.",
    )
    verify = actions.add_parser(
        "verify",
        help="sha256 of every mirror file in the data root against its manifest",
        description="Hash every local mirror file named by a manifest and compare with the manifest's sha256. "
        "Exit status 2 if any file differs; missing files are reported and only fail with --strict.",
    )
    verify.add_argument(
        "--strict", action="store_true", help="also fail (exit 2) when a mirror file is missing"
    )
    for sub in (listing, verify):
        sub.add_argument(
            "--data-root",
            default=None,
            type=Path,
            help="data root (default: $NORMPROBE_DATA, else ~/.cache/normprobe/data)",
        )
    parser.set_defaults(func=run)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _split_row(name: str, split: str, root: Path) -> list[str]:
    from normprobe.data import load_manifest
    from normprobe.data.sources import npz_shapes

    manifest = load_manifest(name)
    size = int(manifest.splits[split]["size"])
    spec = manifest.mirror.get(split)
    folder = manifest.upstream.get("folder")
    if spec is not None and (root / spec["file"]).is_file():
        try:
            shapes = npz_shapes(root / spec["file"])
        except NormprobeError:
            return [
                name,
                "images",
                split,
                str(size),
                f"0/{size}",
                f"{spec['file']} (unreadable)",
                "none: the file is not a readable .npz",
            ]
        if "offsets" in shapes and "jpeg" in shapes:
            available = shapes["offsets"][0] - 1
        else:
            available = shapes.get(spec.get("images_key", "images"), (0,))[0]
        file_cell = f"{spec['file']} (present)"
        source = f"mirror:{spec['file']}" if available else f"none: {spec['file']} lacks this split's arrays"
    else:
        file_cell = f"{spec['file']} (missing)" if spec is not None else "-"
        available = 0
        source = "none: put the mirror file or torchvision's folder in the data root"
        if folder and manifest.upstream.get("torchvision") and (root / folder).exists():
            from normprobe import data

            try:
                available = len(data.load(name, split, root))
                source = f"torchvision:{folder}/"
            except NormprobeError as err:
                source = f"none: {err}"
    partial = " (partial)" if 0 < available < size else ""
    return [name, "images", split, str(size), f"{available}/{size}{partial}", file_cell, source]


def _label_row(name: str, root: Path) -> list[str]:
    from normprobe.data import load_manifest
    from normprobe.data.sources import npz_shapes

    manifest = load_manifest(name)
    file = manifest.mirror["file"]
    size = int(manifest.raw["size"])
    images = manifest.raw.get("images", {})
    target = f"labels for {images.get('dataset', '?')}/{images.get('split', '?')}"
    if not (root / file).is_file():
        return [name, "labels", "-", str(size), f"0/{size}", f"{file} (missing)", f"none ({target})"]
    try:
        shapes = npz_shapes(root / file)
    except NormprobeError:
        return [
            name,
            "labels",
            "-",
            str(size),
            f"0/{size}",
            f"{file} (unreadable)",
            "none: the file is not a readable .npz",
        ]
    rows = min((shape[0] for shape in shapes.values()), default=0)
    return [
        name,
        "labels",
        "-",
        str(size),
        f"{rows}/{size}",
        f"{file} (present)",
        f"mirror:{file} ({target}; fields {', '.join(shapes)})",
    ]


def list_datasets(root: Path) -> str:
    from normprobe.data import load_manifest, manifest_names

    rows = [["dataset", "kind", "split", "size", "available", "mirror file", "source used"]]
    for name in manifest_names():
        manifest = load_manifest(name)
        if manifest.kind == "images":
            rows.extend(_split_row(name, split, root) for split in manifest.splits)
        else:
            rows.append(_label_row(name, root))
    return _table(rows)


def run(args: argparse.Namespace) -> int:
    from normprobe import data
    from normprobe.data import resolve_data_root

    root = resolve_data_root(args.data_root)
    print(f"data root: {root}{'' if root.is_dir() else ' (does not exist)'}")
    if args.datasets_action == "list":
        print(list_datasets(root))
        return 0
    rows = data.verify(root)
    print(
        _table(
            [["status", "file", "sha256 / path"]] + [[status, file, detail] for file, status, detail in rows]
        )
    )
    mismatched = [file for file, status, _ in rows if status == "MISMATCH"]
    missing = [file for file, status, _ in rows if status == "missing"]
    ok = len(rows) - len(mismatched) - len(missing)
    print(f"{ok} ok, {len(mismatched)} mismatched, {len(missing)} missing")
    if mismatched:
        raise NormprobeError(
            f"{len(mismatched)} mirror file(s) in {root} do not match the manifest sha256: {', '.join(mismatched)}"
        )
    if missing and args.strict:
        raise NormprobeError(
            f"{len(missing)} mirror file(s) missing from {root} (--strict): {', '.join(missing)}"
        )
    return 0
