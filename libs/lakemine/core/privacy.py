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
from typing import Mapping

import pyspark.sql.functions as F
from pyspark.sql import Column

from lakemine.core import storage
from lakemine.core.errors import UsageError

# the customer id as clean writes it to silver: the raw string trimmed of spaces, a float-looking
# ".0" suffix (Excel exports of numeric ids) dropped
_FLOAT_SUFFIX = re.compile(r"\.0+$")
_BLOCK = 64  # SHA-256's block size in bytes, for HMAC


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


def normalized_column(column: Column) -> Column:
    """`normalize_id` as a Spark expression."""
    return F.regexp_replace(F.trim(column), r"\.0+$", "")


def hash_column(key: bytes, column: Column) -> Column:
    """`id_hash` as a Spark expression (HMAC-SHA256 by RFC 2104 from Spark's sha2), so ids are
    hashed where the rows are, never collected: null for a null id."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner_pad, outer_pad = bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)
    inner = F.unhex(F.sha2(F.concat(F.lit(bytearray(inner_pad)), F.encode(normalized_column(column), "UTF-8")), 256))
    return F.sha2(F.concat(F.lit(bytearray(outer_pad)), inner), 256)


def key_check(key: bytes) -> str:
    """A short keyed value that changes with the key and reveals nothing of it: what the clean
    fingerprint records so that silver is rebuilt, not mixed, when the key changes."""
    return hmac.new(key, b"lakemine key check", hashlib.sha256).hexdigest()[:16]
