"""The GPU speed script runs end to end (here on the CPU, tiny settings) and reports every configuration."""

from __future__ import annotations

import json

from bench.perf.device_speed import main


def test_device_speed_reports_each_fors_and_precision(tmp_path, capsys) -> None:
    out = tmp_path / "speed.json"
    main(["--device", "cpu", "--width", "4", "--n0", "8", "--n", "64", "--images", "2", "--fors", "0,9",
          "--precisions", "fp32", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["n"] == 64 and data["device"].startswith("cpu")
    assert [(r["method"], r["fors"], r["precision"]) for r in data["results"]] == [("is", 0, "fp32"),
                                                                                  ("ls", 9, "fp32")]
    for r in data["results"]:
        assert len(r["times"]) == 2 and all(t > 0 for t in r["times"])
        assert r["s_per_image"] == sum(r["times"]) / 2
        assert r["noise_s"] > 0 and r["noise_share"] == r["noise_s"] / r["s_per_image"]
    assert "speedup vs IS" in capsys.readouterr().out
