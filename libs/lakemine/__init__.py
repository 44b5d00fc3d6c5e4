"""lakemine: retail data mining on Spark and Delta Lake."""

__version__ = "0.1.0"
