"""The embedded pipeline of ``bench demo``: train (or reuse) the pairs, certify a small grid, write the report."""
