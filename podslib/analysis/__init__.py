"""Results: run folders as pandas frames, statistics with intervals, the paper's logs, figures."""
