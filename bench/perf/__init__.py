"""Speed measurements: same-run ratios of the certification engine against the pure forward pass."""
