"""Certifying a grid: the plan, the in-process runner, local worker processes and Ray behind one executor interface, one collection path, and the progress display."""
