"""Spark and Delta I/O: the one SparkSession, the lake (every Delta read and write), table
names and schemas, and ops/runs."""
