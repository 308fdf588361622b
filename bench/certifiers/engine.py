"""Set-up of a smoothed classifier for timed certification: the batch size, torch.compile and the warm-up.

Importing it does not import torch (the functions do), so ``bench run --help`` lists :data:`COMPILE_MODES`
without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from lsrs.smoothing import LatentSmooth

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def compile_classifier(classifier: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``torch.compile(classifier, mode=mode)``: ``reduce-overhead`` also replays CUDA graphs on GPU.

    The compiled module computes the same function up to rounding (like ``--fold-bn``), so it is a valid
    base classifier; compilation happens at the first call of each batch shape (the runner's warm-up).
    """
    if mode not in COMPILE_MODES or mode == "off":
        raise ValueError(f"compile mode must be one of {COMPILE_MODES[1:]}, got {mode!r}")
    import torch

    return torch.compile(classifier, mode=mode)


def warm_up(smoother: LatentSmooth, x: torch.Tensor, n0: int, n: int, batch_size: int) -> float:
    """One untimed certification of ``x`` that runs every batch shape of a CERTIFY with ``n0`` and ``n``
    samples (n0's batches, a full batch and n's last one), so that per-shape set-up (oneDNN primitives,
    torch.compile graphs, CUDA graphs) never lands in the timings. Returns its seconds, for the record."""
    from lsrs.timing import Stopwatch

    warm_n = min(n, batch_size + (n % batch_size or batch_size))
    with Stopwatch(smoother.device) as watch:
        smoother.certify(x, n0, warm_n, 0.5, batch_size, generator=0)
    return watch.seconds


def auto_batch_size(model: torch.nn.Module, sample_shape: tuple[int, ...], n: int, device: torch.device) -> int:
    """Largest batch that fits: on CUDA a memory probe that halves on OOM; on CPU a fixed 256.

    The result never exceeds ``n`` (no point in a buffer larger than the sample count).
    """
    if device.type != "cuda":
        return max(1, min(256, n))
    import torch

    batch = min(8192, n)
    while batch > 1:
        try:
            with torch.inference_mode():
                model(torch.zeros((batch, *sample_shape), device=device))
            torch.cuda.synchronize(device)
            return batch
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2
    return 1
