"""The twin-recipe ablation of docs/ablation.md: train one LS-RS twin per sigma with a recipe, measure it.

For each sigma: the twin (FoR ``--fors``) is initialised and trained exactly as ``bench train`` would (same
seeds, same :class:`lsrs.training.TrainConfig`), starting from / distilling from the baseline checkpoint at
that sigma in ``--base`` (made by ``bench train --fors 0``, or ``bench demo``); then its noisy test accuracy
(mean of 4 noise draws over the whole test set) and its ACR on the demo's images (every ``--skip``-th test
image, ``--images`` of them, n0 = 64, ``--n``, alpha = 0.001; radius 0 when wrong or abstaining) are printed
as one JSON line. ``--fors 0`` measures the baseline itself (IS-RS). One thread.

    python docs/ablation_twins.py --base results/demo/checkpoints --epochs 10 --lr-step 8 --warm --distill 0.5
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.run.runner import select_indices
from bench.train.grid import model_config_for
from lsrs import checkpoint as ckpt
from lsrs.data import get_dataset, load_dataset
from lsrs.models import build_model
from lsrs.noise import derive_seed
from lsrs.smoothing import smooth_model
from lsrs.training import TrainConfig, evaluate, fit, warm_start_classifier


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--base", required=True, help="checkpoint root holding <dataset>/ with the baselines")
    ap.add_argument("--fors", type=int, default=9)
    ap.add_argument("--sigmas", default="0.25,0.5")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--lr-step", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--opt", default="sgd", help="the twin's optimiser: sgd or adam")
    ap.add_argument("--schedule", default="step", help="step or onecycle")
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--warm", action="store_true", help="warm-start the classifier part from the baseline")
    ap.add_argument("--distill", type=float, default=0.0)
    ap.add_argument("--dT", type=float, default=1.0, help="distillation temperature")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--images", type=int, default=45)
    ap.add_argument("--skip", type=int, default=8)
    ap.add_argument("--tag", default="")
    return ap.parse_args()


def main() -> None:
    a = parse()
    torch.set_num_threads(1)
    info = get_dataset(a.dataset)
    train, test = load_dataset(a.dataset, "train"), load_dataset(a.dataset, "test")
    indices = select_indices([int(test[i][1]) for i in range(len(test))], a.skip, a.images, None)
    for sigma in (float(s) for s in a.sigmas.split(",")):
        torch.manual_seed(derive_seed(0, "init", "resnet18", a.fors))  # bench train's initialisation
        model = build_model("resnet18", **model_config_for("resnet18", info, a.fors, a.width))
        name = f"resnet18-w{a.width}-fors0-sigma{sigma:g}.safetensors"
        baseline, _ = ckpt.load_checkpoint(f"{a.base}/{a.dataset}/{name}")
        if a.warm:
            warm_start_classifier(model, baseline)
        config = TrainConfig(sigma=sigma, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                             noise="latent" if a.fors else "input", weight_decay=a.wd, lr_step=a.lr_step,
                             optimizer=a.opt, schedule=a.schedule, distill=a.distill, distill_temperature=a.dT)
        started = time.process_time()
        result = fit(model, train, test, config, teacher=baseline if a.distill else None)
        cpu = time.process_time() - started
        noisy = sum(evaluate(model, test, sigma, config.noise, seed=s)[1] for s in range(4)) / 4
        credit = []  # sigma 0: the clean accuracy only (nothing to smooth)
        smoother = smooth_model(model.eval(), info.num_classes, sigma) if sigma > 0 else None
        for i in indices if smoother is not None else []:
            x, y = test[i]
            cert = smoother.certify(x, 64, a.n, 0.001, 256, generator=derive_seed(0, "img", i))
            credit.append(cert.radius if cert.prediction == y else 0.0)
        print(json.dumps({"tag": a.tag, "fors": a.fors, "sigma": sigma, "clean": round(result.clean_acc, 4),
                          "noisy4": round(noisy, 4), "acr": round(sum(credit) / len(credit), 4) if credit else None,
                          "train_cpu_s": round(cpu, 1)}), flush=True)


if __name__ == "__main__":
    main()
