"""The erasure key and the keyed hash (HMAC-SHA256) that stands in for a customer id wherever
lakemine must remember an id it may no longer keep (ops/erasures).

The key never lives in the config or the lake: it is read from the environment variable named
by `privacy.key_env` or from the file `privacy.key_file`, which must lie outside the lake.
Without the key an erased id cannot be recognised again, and with another key the hashes of
earlier erasures no longer match: keep it as safe as the lake's credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import TYPE_CHECKING, Mapping

from lakemine.core import storage
from lakemine.core.errors import UsageError

if TYPE_CHECKING:  # Spark is imported where a column is built: the DAG files import this module
    from pyspark.sql import Column

# the customer id as clean writes it to silver: the raw string trimmed of spaces, a float-looking
# ".0" suffix (Excel exports of numeric ids) dropped
_FLOAT_SUFFIX = re.compile(r"\.0+$")


def normalize_id(raw: str) -> str:
    """A customer id as silver holds it (see clean: trimmed, trailing '.0' removed)."""
    return _FLOAT_SUFFIX.sub("", raw.strip(" "))


def load_key(key_env: str, key_file: str | None, lake_root: str | None = None,
             env: Mapping[str, str] | None = None) -> bytes:
    """The erasure key: the variable `key_env`, else the file `key_file`; UsageError when
    neither gives one, or when the file lies inside the lake."""
    env = os.environ if env is None else env
    value = env.get(key_env, "")
    if value.strip():
        return value.strip().encode("utf-8")
    if key_file:
        path = storage.absolute(key_file)
        if lake_root and (path == lake_root or path.startswith(lake_root.rstrip("/") + "/")):
            raise UsageError(f"privacy.key_file {key_file} lies inside the lake: keep the key outside it")
        if not storage.exists(path):
            raise UsageError(f"privacy.key_file {key_file}: no such file")
        key = storage.read_bytes(path).strip()
        if key:
            return key
        raise UsageError(f"privacy.key_file {key_file} is empty")
    raise UsageError(f"no erasure key: set the environment variable {key_env} (or privacy.key_file, a file "
                     "outside the lake); the same key must be used for every erasure of this lake")


def id_hash(key: bytes, customer_id: str) -> str:
    """HMAC-SHA256 of the normalized id under `key`, as 64 hex digits."""
    return hmac.new(key, normalize_id(customer_id).encode("utf-8"), hashlib.sha256).hexdigest()


def _shared_key(key: bytes):
    """The key as a broadcast variable: it reaches the executors without being part of any
    plan (a literal would show in the Spark UI, event logs and explain output)."""
    from pyspark import SparkContext

    return SparkContext.getOrCreate().broadcast(key)


def hash_column(key: bytes, column: Column) -> Column:
    """`id_hash` of a string column, computed where the rows are (an Arrow UDF, the key
    broadcast), never collected: null for a null id."""
    import pandas as pd
    import pyspark.sql.functions as F

    shared = _shared_key(key)

    def keyed_hash(ids: pd.Series) -> pd.Series:
        k = shared.value
        return ids.map(lambda v: id_hash(k, v) if isinstance(v, str) else None)

    # the hints as objects (this module's annotations are strings, pandas imported here)
    keyed_hash.__annotations__ = {"ids": pd.Series, "return": pd.Series}
    return F.pandas_udf(keyed_hash, "string")(column)


# what separates the fields of a raw line that did not parse: the delimiters exports use
_FIELD_SEPARATORS = re.compile(r"[,;\t|]")


def erased_match(key: bytes, hashes: list[str], customer: Column, raw_line: Column) -> Column:
    """struct(hash, by_field) for a line of an erased customer, else null: its `customer`
    field's keyed hash when that is in `hashes` (by_field true), else the hash of the first
    field of `raw_line` (split at , ; tab or |, quotes and spaces stripped) that is."""
    import pandas as pd
    import pyspark.sql.functions as F

    shared, wanted = _shared_key(key), _shared_key("\n".join(hashes).encode())

    def match(ids: pd.Series, lines: pd.Series) -> pd.DataFrame:
        k, targets = shared.value, set(wanted.value.decode().split("\n"))
        found, by_field = [], []
        for value, line in zip(ids, lines):
            h = id_hash(k, value) if isinstance(value, str) and value.strip(" ") else None
            if h in targets:
                found.append(h)
                by_field.append(True)
                continue
            h = None
            if isinstance(line, str):
                tokens = (field.strip(" \"'") for field in _FIELD_SEPARATORS.split(line))
                h = next((t for t in (id_hash(k, token) for token in tokens if token) if t in targets), None)
            found.append(h)
            by_field.append(False)
        return pd.DataFrame({"hash": found, "by_field": by_field})

    match.__annotations__ = {"ids": pd.Series, "lines": pd.Series, "return": pd.DataFrame}
    result = F.pandas_udf(match, "hash string, by_field boolean")(customer, raw_line)
    return F.when(result["hash"].isNotNull(), result)


def require_same_key(key: bytes, recorded: set[str | None]) -> None:
    """UsageError unless `key` is the key the recorded erasures were hashed with."""
    if recorded - {key_check(key)}:
        raise UsageError("the erasure key is not the one this lake's erasures were recorded with: their hashes would "
                         "not match (erased customers would come back); use the original key")


def key_check(key: bytes) -> str:
    """A short keyed value that changes with the key and reveals nothing of it: what the clean
    fingerprint records so that silver is rebuilt, not mixed, when the key changes."""
    return hmac.new(key, b"lakemine key check", hashlib.sha256).hexdigest()[:16]
