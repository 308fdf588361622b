"""Training the paired models of a grid: baselines, their orthogonal twins and the Lipschitz twin, with the twin recipes."""
