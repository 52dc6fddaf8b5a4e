"""Tools that drive the training side: the benchmark, sweeps, branching from a checkpoint."""
