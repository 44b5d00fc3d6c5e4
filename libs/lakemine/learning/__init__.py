"""The churn model: training set, the network, distributed training, scoring and drift."""
