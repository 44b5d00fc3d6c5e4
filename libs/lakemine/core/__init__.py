"""Foundations every layer uses, light enough for Airflow DAG files (no pyspark, torch or delta):
errors, the typed configuration and its packaged defaults, and the one file-system layer."""
