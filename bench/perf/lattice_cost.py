"""What lattice noise costs (lsrs.lattice): certification time and certified radii against Gaussian noise.

Two measurements, each comparing ``noise="lattice"`` with ``noise="gaussian"`` in the same process, on the same
images, with interleaved calls (ABBA over rounds, as :mod:`bench.perf.speed`):

* ``speed``: the width-64 speed preset's models (random weights, ``SPEED_CONFIGS["paper"]`` shapes), one CERTIFY
  per case and round, IS-RS on the baseline and LS-RS on each FoR twin; the ratio is lattice time / Gaussian
  time per round, summarised by its median;
* ``models``: trained checkpoints (e.g. the digits demo's, ``results/demo/checkpoints``): every test image
  certified with both noises (images rounded once to the 8-bit lattice for both, so the images are the same);
  total certification time per noise, and the certified radii (ACR, certified accuracy, mean paired radius
  difference with a bootstrap interval).

    python -m bench.perf.lattice_cost speed --rounds 5 --n 200
    python -m bench.perf.lattice_cost models --checkpoints results/demo/checkpoints --dataset digits --n 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from bench.perf.speed import SPEED_CONFIGS, build_models, measure, torch_threads
from lsrs.lattice import to_input_lattice
from lsrs.smoothing import LatentSmooth, smooth_model

NOISES = ("gaussian", "lattice")


def _smoother(model: torch.nn.Module, num_classes: int, sigma: float, noise: str) -> LatentSmooth:
    return smooth_model(model, num_classes, sigma, noise=noise)


def speed(rounds: int, n: int, width: int, fors: tuple[int, ...], threads: int | None, clock: str) -> dict:
    """Median per-round ratio lattice / Gaussian of one CERTIFY, per method, at the speed preset's shapes."""
    cfg = SPEED_CONFIGS["paper"]
    from dataclasses import replace

    cfg = replace(cfg, width=width, fors=fors, n=n)
    with torch_threads(threads):
        models = build_models(cfg)
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.randint(0, 256, (cfg.in_channels, cfg.in_size, cfg.in_size), generator=g).float() / 255
        cases = {}
        for k, model in models.items():
            for noise in NOISES:
                smoother = _smoother(model, cfg.num_classes, cfg.sigma, noise)
                cases[f"{k}/{noise}"] = (lambda s=smoother: s.certify(x, cfg.n0, n, cfg.alpha, cfg.batch_size,
                                                                    generator=0))
        timings = measure(cases, rounds, clock=clock)
    out = {"width": width, "n0": cfg.n0, "n": n, "batch_size": cfg.batch_size, "rounds": rounds, "clock": clock,
           "threads": threads, "methods": {}}
    for k in models:
        ratios = [t[f"{k}/lattice"] / t[f"{k}/gaussian"] for t in timings]
        out["methods"]["is" if k == 0 else f"ls{k}"] = {
            "gaussian_s": statistics.median(t[f"{k}/gaussian"] for t in timings),
            "lattice_s": statistics.median(t[f"{k}/lattice"] for t in timings),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        }
    return out


def _paired_interval(diff: np.ndarray) -> tuple[float, float]:
    from scipy.stats import bootstrap

    res = bootstrap((diff,), np.mean, n_resamples=2000, method="BCa", random_state=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def models(checkpoints: Path, dataset: str, n0: int, n: int, alpha: float, batch_size: int,
           max_images: int | None) -> dict:
    """Both noises on every (checkpoint, test image): time and radii, same rounded images, interleaved."""
    from lsrs.checkpoint import load_checkpoint, read_index
    from lsrs.data import load_dataset
    from lsrs.noise import derive_seed

    data = load_dataset(dataset, "test")
    count = len(data) if max_images is None else min(max_images, len(data))
    out = []
    for entry in read_index(checkpoints, dataset):
        if float(entry["sigma"]) == 0.0 or int(entry["fors"]) == int(entry.get("fors_total", -1)):
            continue
        model, meta = load_checkpoint(entry["abspath"], expected_sha256=entry["sha256"])
        if int(entry["fors"]) >= 18:  # the fully orthogonal Lipschitz twin: not a smoothing model
            continue
        sigma, num_classes = float(entry["sigma"]), int(entry["num_classes"])
        smoothers = {noise: _smoother(model, num_classes, sigma, noise) for noise in NOISES}
        rows = {noise: [] for noise in NOISES}
        for i in range(count):
            x, label = data[i]
            x = to_input_lattice(x)
            seed = derive_seed(0, i, int(entry["fors"]), sigma)
            order = NOISES if i % 2 == 0 else NOISES[::-1]
            for noise in order:
                c = smoothers[noise].certify(x, n0, n, alpha, batch_size, generator=seed)
                correct = c.prediction == int(label)
                rows[noise].append((c.radius if correct else 0.0, correct, c.total_s, c.quantization))
        summary = {"fors": int(entry["fors"]), "sigma": sigma, "images": count}
        for noise in NOISES:
            r = np.array([row[0] for row in rows[noise]])
            summary[noise] = {"acr": float(r.mean()), "accuracy": float(np.mean([row[1] for row in rows[noise]])),
                              "certified_at_0.25": float((r >= 0.25).mean()),
                              "time_s": float(sum(row[2] for row in rows[noise])),
                              "quantization": float(rows[noise][0][3])}
        diff = np.array([a[0] - b[0] for a, b in zip(rows["lattice"], rows["gaussian"], strict=True)])
        summary["time_ratio"] = summary["lattice"]["time_s"] / summary["gaussian"]["time_s"]
        summary["acr_ratio"] = summary["lattice"]["acr"] / summary["gaussian"]["acr"]
        summary["radius_diff_mean"] = float(diff.mean())
        summary["radius_diff_ci95"] = _paired_interval(diff) if np.ptp(diff) > 0 else (0.0, 0.0)
        out.append(summary)
    return {"checkpoints": str(checkpoints), "dataset": dataset, "n0": n0, "n": n, "alpha": alpha, "models": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf.lattice_cost", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed", help="the width-64 speed preset's models, random weights")
    sp.add_argument("--rounds", type=int, default=5)
    sp.add_argument("--n", type=int, default=200)
    sp.add_argument("--width", type=int, default=64)
    sp.add_argument("--fors", default="9")
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    mp = sub.add_parser("models", help="trained checkpoints: time and radii")
    mp.add_argument("--checkpoints", type=Path, required=True)
    mp.add_argument("--dataset", default="digits")
    mp.add_argument("--n0", type=int, default=64)
    mp.add_argument("--n", type=int, default=1000)
    mp.add_argument("--alpha", type=float, default=0.001)
    mp.add_argument("--batch-size", type=int, default=256)
    mp.add_argument("--max-images", type=int, default=None)
    for p in (sp, mp):
        p.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.what == "speed":
        result = speed(args.rounds, args.n, args.width, tuple(int(k) for k in args.fors.split(",")),
                       args.threads or None, args.clock)
    else:
        result = models(args.checkpoints, args.dataset, args.n0, args.n, args.alpha, args.batch_size, args.max_images)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
