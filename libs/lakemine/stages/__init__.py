"""Stages from raw files to gold: generate, ingest, clean, features, maintain. Each module has
a pure transform (DataFrames in, DataFrames out) and `run(lake, cfg, params) -> Run`."""
