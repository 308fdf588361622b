"""Running a grid: training the paired models, planning, certifying and storing a run in one process, a local pool or Ray, importing peers' results, and the demo pipeline."""
