"""A run's results into the paper's tables, figures, notes and cross-run comparisons."""
