"""Seconds per certified image at the real CIFAR ResNet18 size, IS-RS vs LS-RS, on the available device.

``python -m bench.perf.device_speed`` certifies a few random images with n0 = 100, n = 100,000 (Cohen et al.'s
setting) through the same engine ``bench run`` uses (BatchNorm folded, channels_last, batch size from the
memory probe) for the baseline and each FoR twin, in each precision, and prints s/image with the device
name. Weights are random: certification time does not depend on them, and no trained CIFAR weights ship
with the package. On CUDA the times come from CUDA events (``lsrs.timing.Stopwatch``). ``noise`` is the share
of drawing one certificate's noise alone (:func:`bench.perf.noise_share.noise_draw`, timed once per timed
image after the certificates) in its certification time.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from bench.perf.noise_share import noise_draw
from bench.run.runner import (
    COMPILE_MODES,
    auto_batch_size,
    compile_classifier,
    device_name,
    warm_up,
)
from lsrs.devices import resolve_device
from lsrs.inference import fold_batchnorm
from lsrs.models import resnet18
from lsrs.smoothing import smooth_model
from lsrs.timing import Stopwatch


def measure(fors: int, precision: str, device: torch.device, *, width: int, n0: int, n: int, images: int,
            batch_size: int | None, sigma: float = 0.25, compile_mode: str = "off") -> dict:
    """Mean and per-image seconds of CERTIFY for one model and precision (one warm-up image excluded)."""
    torch.manual_seed(fors)
    model = fold_batchnorm(resnet18(10, fors, width=width, in_size=32, in_channels=3)).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    smoother = smooth_model(model, 10, sigma, device=device, precision=precision, channels_last=True)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(3, 32, 32, generator=gen) for _ in range(images + 1)]
    latent = tuple(smoother.encode(xs[0]).shape[1:])
    batch = batch_size or auto_batch_size(smoother.classifier, latent, n, device)
    if compile_mode != "off":
        smoother.classifier = compile_classifier(smoother.classifier, compile_mode)
    warm_up(smoother, xs[0], n0, n, batch)
    times = [smoother.certify(x, n0, n, 0.001, batch, generator=i).total_s for i, x in enumerate(xs[1:])]
    draw = noise_draw(smoother, latent, n0, n, batch)
    noise_times = []
    for _ in times:
        with Stopwatch(device) as sw:
            draw()
        noise_times.append(sw.seconds)
    return {"fors": fors, "method": "is" if fors == 0 else "ls", "precision": precision, "compile": compile_mode,
            "batch_size": batch,
            "latent_dims": int(torch.tensor(latent).prod()), "s_per_image": statistics.mean(times),
            "times": times, "noise_s": statistics.mean(noise_times),
            "noise_share": statistics.mean(noise_times) / statistics.mean(times)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda [auto]")
    parser.add_argument("--width", type=int, default=64, help="ResNet18 base width [64, the CIFAR model]")
    parser.add_argument("--fors", default="0,1,5,9,13", help="0 = IS-RS baseline [0,1,5,9,13]")
    parser.add_argument("--precisions", default=None, help="[fp32,bf16,fp16 on CUDA; fp32,bf16 on CPU]")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=3, help="timed images per configuration [3]")
    parser.add_argument("--batch-size", type=int, default=None, help="[memory probe on CUDA, 256 on CPU]")
    parser.add_argument("--compile", default="off", help=f"comma list of {'|'.join(COMPILE_MODES)} [off]")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    precisions = (args.precisions or ("fp32,bf16,fp16" if device.type == "cuda" else "fp32,bf16")).split(",")
    modes = args.compile.split(",")
    if bad := [m for m in modes if m not in COMPILE_MODES]:
        parser.error(f"--compile: unknown mode(s) {bad}; choose from {', '.join(COMPILE_MODES)}")
    torch.backends.cudnn.benchmark = True
    rows = []
    print(f"device: {device_name(device)}  torch {torch.__version__}  width {args.width}  n0 {args.n0}  n {args.n}")
    print(f"{'method':6} {'FoR':>4} {'prec':5} {'compile':15} {'batch':>6} {'latent':>7} {'s/image':>9} {'noise':>6}"
          "  speedup vs IS")
    for mode in modes:
        for precision in precisions:
            is_time = None
            for k in (int(f) for f in args.fors.split(",")):
                r = measure(k, precision, device, width=args.width, n0=args.n0, n=args.n, images=args.images,
                            batch_size=args.batch_size, compile_mode=mode)
                is_time = r["s_per_image"] if k == 0 else is_time
                speed = f"{is_time / r['s_per_image']:.2f}x" if is_time and k else ""
                print(f"{r['method']:6} {k:>4} {precision:5} {mode:15} {r['batch_size']:>6} {r['latent_dims']:>7} "
                      f"{r['s_per_image']:>9.4f} {100 * r['noise_share']:>5.1f}%  {speed}", flush=True)
                rows.append(r)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device_name(device), "torch": torch.__version__, "width": args.width,
                       "n0": args.n0, "n": args.n, "results": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
