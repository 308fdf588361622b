"""Peers' formats read in: Cohen et al.-format checkpoints and per-image certification logs."""
