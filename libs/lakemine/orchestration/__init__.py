"""What Airflow DAG files and cluster submit tooling import: DAG settings, where the Delta jars
are, spark-submit arguments, the --py-files zip. Light on purpose: no module here (nor anything
it imports) loads pyspark, torch or delta; tests/test_layers.py checks it."""
