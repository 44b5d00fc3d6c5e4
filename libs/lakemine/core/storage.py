"""The one file-system layer for everything that is not a Delta table: landing files, models,
checkpoints, metadata, reports, generated data. Built on pyarrow's file systems, so the same
calls work on local paths, `file:` URIs, `hdfs://` (libhdfs), `s3://` (`s3a://` and `s3n://`
are read as `s3://`) and `gs://`, on the driver and inside training workers alike, and none
of it needs a SparkSession.

`is_uri` and `absolute` are the one test of "is this a URI or a local path": every lake,
input and model location goes through them.

Writes go to a temporary name first and are then moved into place, so a reader never sees a
half-written checkpoint.
"""

from __future__ import annotations

import fnmatch
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pyarrow import fs as pafs

_S3_ALIASES = ("s3a://", "s3n://")
_GLOB_CHARS = "*?["


def is_uri(location: str) -> bool:
    """True for `scheme://...` and `file:...` locations, False for plain local paths."""
    return "://" in location or location.startswith("file:")


def absolute(location: str, base: str | Path | None = None) -> str:
    """A location as lakemine stores it: URIs as they are (without a trailing slash), local
    paths made absolute (relative ones under `base`, default the working directory)."""
    if is_uri(location):
        return location.rstrip("/")
    if base is None:
        return os.path.abspath(location)
    return str((Path(base) / location).resolve())


def file_url(location: str) -> str:
    """The URL Petastorm, pyarrow datasets and Airflow assets take: local paths as file:// URLs."""
    if location.startswith("file:"):
        return "file:///" + location[len("file:"):].lstrip("/")
    if "://" not in location:
        return "file://" + os.path.abspath(location)
    return location


def _resolve(location: str) -> tuple[pafs.FileSystem, str]:
    if location.startswith("file:"):
        location = "/" + location[len("file:"):].lstrip("/")
    if "://" not in location:
        return pafs.LocalFileSystem(), os.path.abspath(location)
    for alias in _S3_ALIASES:
        if location.startswith(alias):
            location = "s3://" + location[len(alias):]
    return pafs.FileSystem.from_uri(location)


def _join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}"


def exists(location: str) -> bool:
    filesystem, path = _resolve(location)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes(location: str, data: bytes) -> None:
    filesystem, path = _resolve(location)
    parent = path.rsplit("/", 1)[0]
    filesystem.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
    with filesystem.open_output_stream(tmp) as out:
        out.write(data)
    filesystem.move(tmp, path)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def read_bytes(location: str) -> bytes:
    filesystem, path = _resolve(location)
    with filesystem.open_input_stream(path, compression=None) as src:
        return src.read()


def head_bytes(location: str, n: int = 65536, decompress: bool = False) -> bytes:
    """The first `n` bytes of a file (fewer when it is shorter); with `decompress`, of its
    content decompressed as its name says (.gz, .bz2)."""
    filesystem, path = _resolve(location)
    with filesystem.open_input_stream(path, compression="detect" if decompress else None) as src:
        return src.read(n)


def read_to_end(location: str, decompress: bool = False, chunk: int = 2**22) -> int:
    """Read a file to its end without keeping it (with `decompress`, its content decompressed
    as its name says); its length. Raises what the reader raises on a corrupt or cut file."""
    import bz2
    import gzip

    filesystem, path = _resolve(location)
    # Python's own decoders: they check a stream's end marker and checksum (pyarrow's bz2
    # reader takes a stream cut before its end marker as complete)
    openers = {"gz": lambda raw: gzip.GzipFile(fileobj=raw), "bz2": bz2.BZ2File}
    opener = openers.get(path.rsplit(".", 1)[-1].lower()) if decompress else None
    total = 0
    with filesystem.open_input_stream(path, compression=None) as raw:
        src = opener(raw) if opener else raw
        while block := src.read(chunk):
            total += len(block)
    return total


def write_json(location: str, obj) -> None:
    write_bytes(location, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(location: str):
    return json.loads(read_bytes(location))


def list_dirs(location: str) -> list[str]:
    """Names of the folders directly under `location` (none when it does not exist)."""
    filesystem, path = _resolve(location)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def list_files(location: str) -> list[str]:
    """Names of the files directly under `location` (none when it does not exist)."""
    filesystem, path = _resolve(location)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def move(source: str, dest: str) -> bool:
    """Rename `source` to `dest` (same file system); False when `source` is gone (on a local
    or HDFS lake the rename is atomic: of two processes moving one file, one gets False)."""
    filesystem, path = _resolve(source)
    try:
        filesystem.move(path, _resolve(dest)[1])
    except FileNotFoundError:
        return False
    return True


def delete(location: str) -> None:
    """Remove the file at `location`; a missing file is no error."""
    filesystem, path = _resolve(location)
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        pass


def delete_dir(location: str) -> None:
    """Remove the folder at `location` with everything under it; a missing folder is no error."""
    filesystem, path = _resolve(location)
    try:
        filesystem.delete_dir(path)
    except FileNotFoundError:
        pass


def data_files(location: str, suffix: str = ".parquet") -> tuple[int, int]:
    """(count, bytes) of the files ending in `suffix` anywhere under `location` except in
    `_delta_log` (a table's data files on disk, live or not)."""
    filesystem, path = _resolve(location)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return 0, 0
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
             and "/_delta_log/" not in i.path]
    return len(files), sum(i.size for i in files)


@dataclass(frozen=True)
class FileInfo:
    """A file found by `list_inputs`: its location (in the form it was asked for), size, and
    modification time in microseconds since the epoch (None where the file system has none)."""

    path: str
    size: int
    modified_us: int | None = None

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def _micros(info: pafs.FileInfo) -> int | None:
    return None if info.mtime_ns is None else int(info.mtime_ns) // 1000


def _hidden(name: str) -> bool:
    return name.startswith("_") or name.startswith(".")


def _outer(location: str, path: str, filesystem_path: str) -> str:
    """`path` (a file system path under `filesystem_path`) in the form `location` was given."""
    if not is_uri(location):
        return path
    return location.rstrip("/") + path[len(filesystem_path.rstrip("/")):]


def _glob(filesystem: pafs.FileSystem, pattern: str) -> list[pafs.FileInfo]:
    """Paths matching a glob whose wildcards may stand in any path component."""
    parts = pattern.split("/")
    fixed = next((i for i, p in enumerate(parts) if any(c in p for c in _GLOB_CHARS)), len(parts))
    if fixed == len(parts):
        info = filesystem.get_file_info(pattern)
        return [] if info.type == pafs.FileType.NotFound else [info]
    base = "/".join(parts[:fixed]) or "/"
    if filesystem.get_file_info(base).type != pafs.FileType.Directory:
        return []
    depth = len(parts) - fixed
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=depth > 1))
    prefix = base.rstrip("/") + "/"
    return [i for i in infos
            if len(i.path[len(prefix):].split("/")) == depth and fnmatch.fnmatchcase(i.path, pattern)]


def list_inputs(pattern: str, suffixes: tuple[str, ...]) -> list[FileInfo]:
    """Files named by `pattern` (a file, a folder or a glob), sorted by path.

    Folders are walked recursively; there, only names ending in `suffixes` count and names
    starting with '_' or '.' are skipped. A file named directly is always taken.
    """
    filesystem, path = _resolve(pattern)
    lowered = tuple(s.lower() for s in suffixes)
    found: list[FileInfo] = []
    for info in _glob(filesystem, path):
        if info.type == pafs.FileType.Directory:
            root = info.path.rstrip("/") + "/"
            for f in filesystem.get_file_info(pafs.FileSelector(info.path, recursive=True)):
                rel = f.path[len(root):]
                if f.type != pafs.FileType.File or any(_hidden(part) for part in rel.split("/")):
                    continue
                if f.base_name.lower().endswith(lowered):
                    found.append(FileInfo(_outer(pattern, f.path, path), int(f.size), _micros(f)))
        elif info.type == pafs.FileType.File:
            found.append(FileInfo(_outer(pattern, info.path, path), int(info.size), _micros(info)))
    return sorted(found, key=lambda f: f.path)


def publish_parts(tmp: str, out: str, pattern: str) -> list[str]:
    """Move the part files of a Spark write at `tmp` into `out` as pattern.format(i),
    replacing earlier ones; returns the new names.

    Old files matching the pattern's prefix (and their checksum files) are removed first, so
    a smaller second run leaves no stale files behind.
    """
    filesystem, tmp_path = _resolve(tmp)
    _, out_path = _resolve(out)
    filesystem.create_dir(out_path, recursive=True)
    prefix = pattern.split("{", 1)[0]
    for info in filesystem.get_file_info(pafs.FileSelector(out_path)):
        if info.type == pafs.FileType.File and info.base_name.lstrip(".").startswith(prefix):
            filesystem.delete_file(info.path)
    parts = sorted(i.path for i in filesystem.get_file_info(pafs.FileSelector(tmp_path))
                   if i.base_name.startswith("part-"))
    names = []
    for i, part in enumerate(parts):
        name = pattern.format(i)
        filesystem.move(part, _join(out_path, name))
        names.append(name)
    filesystem.delete_dir(tmp_path)
    return names
