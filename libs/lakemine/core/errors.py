"""Errors that the CLI maps to exit codes: 2 for bad arguments or unusable input, 1 otherwise."""

from __future__ import annotations


class LakemineError(Exception):
    """Base class. `exit_code` is what the CLI returns; the message is one line for people."""

    exit_code = 1


class UsageError(LakemineError):
    """Bad arguments or configuration: exit 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration key has a bad value; the message names the key and what is allowed."""


class InputError(UsageError):
    """Unusable input (missing path, wrong columns, empty or binary file): exit 2, nothing written."""


class SchemaError(LakemineError):
    """A stage's input table lacks a column it needs; the message names table and column."""


class StageError(LakemineError):
    """A stage failed for a reason other than its input; the message names stage and table."""
