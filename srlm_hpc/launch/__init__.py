"""Executors: how stage shards get run. Local runs them in this process; Slurm queues array
jobs. Stages never import this package."""
