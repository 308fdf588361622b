"""``python -m bench.speed``: the same as ``python -m bench.perf.speed`` (kept so that the documented command still runs)."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("bench.perf.speed", run_name="__main__", alter_sys=True)
