"""Mining stages on the gold tables: association rules (fpgrowth) and customer segments
(kmeans). Same shape as the stages: pure transforms plus `run(lake, cfg, params) -> Run`."""
