"""Size report of a compressed file: per tensor and in total, dense bytes against stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .container import read_container

__all__ = ["size_report", "format_size_report"]

_ITEM = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "float16": 2, "bfloat16": 2,
         "int16": 2, "int8": 1, "uint8": 1, "bool": 1}


def size_report(path: str | Path, reference: str | Path | None = None) -> dict:
    """{"layers": [...], "total": {...}} of a compressed file.

    Per tensor: dense bytes (numel x item size), stored bytes (its encoded segments, before
    the zstd pass over the whole payload, so the per-tensor figures add up to the payload,
    not to the file), ratio (None for a tied weight stored under another name), encoding,
    survivors. Total: dense bytes of the state dict, the
    file's bytes, their ratio, and the ratio to ``reference`` (e.g. the run's model.pt)."""
    manifest, _ = read_container(path, with_payload=False)
    layers: list[dict] = []
    for entry in manifest["tensors"]:
        numel = int(np.prod(entry["shape"], dtype=np.int64))
        dense = numel * _ITEM[entry["dtype"]]
        stored = sum(length for _, length in entry["segments"])
        if entry["layout"] == "shared":  # a tied weight, stored once under the other name
            of = next((r for r in layers if r["name"] == entry["of"]), None)
            layers.append({"name": entry["name"], "shape": entry["shape"], "dense_bytes": dense,
                           "stored_bytes": 0, "ratio": None,
                           "encoding": f"shared with {entry['of']}",
                           "kept": of["kept"] if of else numel, "numel": numel})
            continue
        sparse = entry["layout"] == "sparse"
        values = entry.get("values", {})
        layers.append({
            "name": entry["name"], "shape": entry["shape"], "dense_bytes": dense,
            "stored_bytes": stored, "ratio": dense / stored if stored else float("inf"),
            "encoding": (entry["positions"]["encoding"] + (
                f"{entry['positions']['width']}" if entry["positions"]["encoding"] ==
                "relative" else "") + (f"+{values['bits']}b codes"
                                       if values.get("encoding") == "codebook" else ""))
            if sparse else "raw",
            "kept": int(entry["nnz"]) if sparse else numel, "numel": numel})
    dense_total = sum(r["dense_bytes"] for r in layers)
    file_bytes = Path(path).stat().st_size
    total = {"dense_bytes": dense_total, "payload_bytes": int(manifest["payload_bytes"]),
             "file_bytes": file_bytes, "ratio": dense_total / file_bytes, "bits": manifest["bits"]}
    if reference is not None and Path(reference).is_file():
        total["reference"] = str(reference)
        total["reference_bytes"] = Path(reference).stat().st_size
        total["reference_ratio"] = total["reference_bytes"] / file_bytes
    return {"layers": layers, "total": total}


def format_size_report(report: dict) -> str:
    from ..tables import format_table

    rows = [(r["name"], "x".join(map(str, r["shape"])) or "scalar", r["kept"], r["encoding"],
             r["dense_bytes"], r["stored_bytes"],
             "-" if r["ratio"] is None else f"{r['ratio']:.1f}x")
            for r in report["layers"]]
    t = report["total"]
    rows.append(("total (file, after zstd)", "", "", f"{t['bits']}-bit values", t["dense_bytes"],
                 t["file_bytes"], f"{t['ratio']:.1f}x"))
    text = format_table(["tensor", "shape", "kept", "encoding", "dense bytes", "stored bytes",
                         "ratio"], rows)
    if "reference_bytes" in t:
        text += (f"\n{t['file_bytes']:,} bytes against {t['reference_bytes']:,} for "
                 f"{Path(t['reference']).name}: {t['reference_ratio']:.1f}x smaller")
    return text
