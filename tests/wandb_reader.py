"""Read back what an offline W&B run logged, from its `.wandb` file, with no server.

The file is a LevelDB-style log: a 7-byte header (b":W&B", magic 0xBEE1 as u16, version u8),
then 32 KiB blocks of records `[crc32 u32][length u16][type u8][payload]`; a record that does
not fit in a block is split into FIRST, MIDDLE..., LAST pieces, and a block's last < 7 bytes
are zero padding. Each assembled payload is a protobuf `wandb_internal_pb2.Record`.

A logged Table is a history value `{"_type": "table-file", "path": "media/table/..."}` whose JSON
file lies in the offline run's `files/` dir (`OfflineRun.table`); a logged artifact is an
`artifact` record with its name, type, aliases and manifest (`OfflineRun.artifacts`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

BLOCK = 32 * 1024
HEADER = 7  # the file header and each record header are both 7 bytes
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    path: Path
    id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    step_metrics: dict[str, str] = field(default_factory=dict)  # define_metric's: name -> its x-axis ("" = none)
    exit_code: Optional[int] = None  # None: the run was never finished
    artifacts: list[Artifact] = field(default_factory=list)

    def table(self, key: str) -> dict[str, Any]:
        """The last version of the Table logged under `key`: {"columns": [...], "data": [[...], ...]}."""
        path = [h[f"{key}/path"] for h in self.history if h.get(f"{key}/_type") == "table-file"][-1]
        return json.loads((self.path.parent / "files" / path).read_text())


@dataclass
class Artifact:
    name: str
    type: str
    aliases: list[str]
    files: dict[str, Path]  # its path inside the artifact -> the local (staged) copy


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a .wandb file (header {ident!r}, magic {magic:#x})")
    pos, pieces = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the block's zero-padded tail
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:  # preallocated, never written
            continue
        if kind in (FULL, FIRST):
            pieces = chunk
        elif kind in (MIDDLE, LAST):
            pieces += chunk
        else:
            raise ValueError(f"{path}: bad record type {kind} at byte {pos}")
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pieces)
            yield record


def _items(update) -> Iterator[tuple[str, Any]]:
    for item in update:
        yield item.key or "/".join(item.nested_key), json.loads(item.value_json)


def read_run(path: Path) -> OfflineRun:
    """path: a `run-<id>.wandb` file or the `offline-run-*` dir holding one."""
    path = Path(path)
    if path.is_dir():
        (path,) = path.glob("run-*.wandb")
    run = OfflineRun(path=path)
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.id, run.project, run.name, run.group = r.run_id, r.project, r.display_name, r.run_group
            run.tags = list(r.tags)
            run.config.update(_items(r.config.update))
        elif kind == "config":
            run.config.update(_items(rec.config.update))
        elif kind == "history":
            run.history.append(dict(_items(rec.history.item)))
        elif kind == "summary":
            run.summary.update(_items(rec.summary.update))
        elif kind == "metric":
            run.step_metrics[rec.metric.name] = rec.metric.step_metric
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
        elif kind == "artifact":
            a = rec.artifact
            run.artifacts.append(Artifact(a.name, a.type, list(a.aliases),
                                          {c.path: Path(c.local_path) for c in a.manifest.contents}))
    run.config.pop("_wandb", None)
    return run


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline W&B runs a job left in its run dir."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
