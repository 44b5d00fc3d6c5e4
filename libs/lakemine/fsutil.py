"""File-system helpers over Hadoop's FileSystem API, so local paths and cluster URIs behave alike."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import SparkSession


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def _fs(spark: SparkSession, path: str):
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark._jsc.hadoopConfiguration()), hpath


def _hidden(name: str) -> bool:
    return name.startswith("_") or name.startswith(".")


def list_inputs(spark: SparkSession, pattern: str, suffixes: tuple[str, ...]) -> list[FileInfo]:
    """Files named by `pattern` (a file, a directory or a glob), sorted by path.

    Directories are walked recursively; there, only names ending in `suffixes` count and
    names starting with '_' or '.' are skipped. A file named directly is always taken.
    """
    fs, hpath = _fs(spark, pattern)
    statuses = fs.globStatus(hpath) or []
    found: list[FileInfo] = []
    for status in statuses:
        if status.isDirectory():
            it = fs.listFiles(status.getPath(), True)
            while it.hasNext():
                st = it.next()
                p = st.getPath()
                rel = p.toString()[len(status.getPath().toString()):]
                if any(_hidden(part) for part in rel.split("/") if part):
                    continue
                if p.getName().lower().endswith(tuple(s.lower() for s in suffixes)):
                    found.append(FileInfo(p.toString(), int(st.getLen())))
        else:
            found.append(FileInfo(status.getPath().toString(), int(status.getLen())))
    return sorted(found, key=lambda f: f.path)


def exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = _fs(spark, path)
    return bool(fs.exists(hpath))


def head_bytes(spark: SparkSession, path: str, n: int = 65536) -> bytes:
    """The first `n` bytes of a file."""
    jvm = spark._jvm
    fs, hpath = _fs(spark, path)
    stream = fs.open(hpath)
    try:
        bounded = jvm.org.apache.commons.io.input.BoundedInputStream(stream, n)
        return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(bounded))
    finally:
        stream.close()


def write_text(spark: SparkSession, path: str, text: str) -> None:
    fs, hpath = _fs(spark, path)
    fs.setWriteChecksum(False)
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def publish_parts(spark: SparkSession, tmp: str, out: str, pattern: str) -> list[str]:
    """Move Spark's part files from `tmp` to `out` as pattern.format(i), replacing earlier ones.

    Returns the new file names. Old files matching the pattern's prefix are removed first, so
    a smaller second run leaves no stale files behind.
    """
    fs, tmp_path = _fs(spark, tmp)
    _, out_path = _fs(spark, out)
    fs.mkdirs(out_path)
    prefix = pattern.split("{", 1)[0]
    for status in fs.listStatus(out_path):
        if status.getPath().getName().startswith(prefix):
            fs.delete(status.getPath(), False)
    parts = [st.getPath() for st in fs.listStatus(tmp_path) if st.getPath().getName().startswith("part-")]
    parts.sort(key=lambda p: p.getName())
    names = []
    jvm = spark._jvm
    for i, part in enumerate(parts):
        name = pattern.format(i)
        if not fs.rename(part, jvm.org.apache.hadoop.fs.Path(out_path, name)):
            raise OSError(f"could not move {part.toString()} to {out}/{name}")
        names.append(name)
    fs.delete(tmp_path, True)
    for status in fs.listStatus(out_path):  # checksum files of the local file system
        n = status.getPath().getName()
        if n.startswith(".") and n.endswith(".crc") and n[1:].startswith(prefix):
            fs.delete(status.getPath(), False)
    return names
