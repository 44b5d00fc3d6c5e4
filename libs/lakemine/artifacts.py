"""Files that are not tables (model weights, checkpoints, metadata, reports), on any filesystem
pyarrow knows: local paths, `file:`, `hdfs://`, `s3://`, `gs://`.

Writes go to a temporary name first and are then moved into place, so a reader never sees a
half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import uuid

from pyarrow import fs as pafs


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    if uri.startswith("file:"):
        uri = "/" + uri[len("file:"):].lstrip("/")
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    filesystem, path = _resolve(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes(uri: str, data: bytes) -> None:
    filesystem, path = _resolve(uri)
    parent = path.rsplit("/", 1)[0]
    filesystem.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
    with filesystem.open_output_stream(tmp) as out:
        out.write(data)
    filesystem.move(tmp, path)


def read_bytes(uri: str) -> bytes:
    filesystem, path = _resolve(uri)
    with filesystem.open_input_stream(path) as src:
        return src.read()


def write_json(uri: str, obj) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def list_dirs(uri: str) -> list[str]:
    """Names of the folders directly under `uri` (none when it does not exist)."""
    filesystem, path = _resolve(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def data_files(uri: str, suffix: str = ".parquet") -> tuple[int, int]:
    """(count, bytes) of the files ending in `suffix` anywhere under `uri` except in
    `_delta_log` (a table's data files on disk, live or not)."""
    filesystem, path = _resolve(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return 0, 0
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
             and "/_delta_log/" not in i.path]
    return len(files), sum(i.size for i in files)


def dataset_url(uri: str) -> str:
    """The URL Petastorm and pyarrow datasets take: local paths become file:// URLs."""
    if uri.startswith("file:"):
        return "file:///" + uri[len("file:"):].lstrip("/")
    if "://" not in uri:
        return "file://" + os.path.abspath(uri)
    return uri
