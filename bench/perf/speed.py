"""Certification speed: how close the engine gets to the pure forward pass, measured as same-run ratios.

Certification is ``n0 + n`` forward passes of the base classifier on noisy copies; its floor is the pure
batched forward time of that classifier (the baseline for IS-RS, ``fc`` for LS-RS) at the same batch size,
precision and memory format. This module times, on one fixed small ResNet18 with random weights:

* ``forward/<m>/<p>`` -- the pure batched forwards of the base classifier of method ``m`` (``is`` =
  baseline, ``lsK`` = ``fc`` of the FoR-K twin) at precision ``p`` that one CERTIFY runs: the same batches
  (``n0``, then ``n`` samples, in batches of ``batch_size``), on fixed pre-drawn noisy inputs, nothing else;
* ``certify/<m>/<p>`` -- one CERTIFY of the engine (:class:`lsrs.smoothing.LatentSmooth` / ``Smooth``);
* ``reference/is/fp32`` -- one CERTIFY of :class:`ReferenceSmooth`, a faithful re-implementation of the loop
  of Cohen et al.'s ``core.py`` (repeat the input, ``randn_like``, argmax, copy to the host per batch,
  count in Python) on a separate, plain (contiguous, fp32) copy of the baseline -- the baseline to beat;
* ``matmul/<p>`` -- a square matmul, the machine's measured peak for the achieved-GFLOP/s column;
* ``noise/<m>/fp32`` -- the noise draws of one CERTIFY alone (:func:`bench.perf.noise_share.noise_draw`: the
  smoother's own stream, same batches), for the share of noise generation in certification.

Cases are timed *interleaved* (ABBA order over rounds) and every ratio is computed per round and then
summarised by its median, so a shared, noisy machine slows numerator and denominator alike. The ratios
(higher is better unless named ``overhead``):

* ``overhead[m]`` = certify time / time of its pure forwards; ``efficiency[m]`` = 1 / overhead;
* ``speedup[lsK]`` = certify(IS) / certify(LS FoR K); ``time_ideal[lsK]`` = forward(baseline) / forward(fc)
  per sample; ``ideal_fraction[lsK]`` = speedup / time_ideal; ``flop_ideal[lsK]`` = FLOPs(baseline) /
  FLOPs(fc) (:func:`lsrs.flops.count_flops`, ``torch.utils.flop_counter``);
* ``vs_reference[p]`` = reference loop (fp32) / engine certify at precision ``p``, same model and n;
* ``gflops[m/p]`` achieved and ``peak_fraction[m/p]`` against the matmul peak of the same precision;
* ``noise_share[m]`` = time of drawing one CERTIFY's noise / certify time (a share: lower is better).

Configurations (``SPEED_CONFIGS``, ``--preset``): ``bench`` (the default) is the engine as ``bench run`` configures
it at width 24 with one thread; ``paper`` is the paper's CIFAR ResNet18 (width 64, batch 200) with torch's
default threads, smoothed by the README's plain call (``Smooth(model, 10, sigma)``, ``LatentSmooth(...)``,
no options), its overhead floor being the *fastest* pure forward of the same function (BatchNorm folded or
not, NCHW or channels_last: ``floor_variants``, all timed every round; the floor is the variant with the
smallest median time, :func:`with_fastest_forward`); ``paper-guard`` is
``paper`` at n = 200 with the folded channels_last forward only (the faster of the folded forwards on CPU,
docs/data/benchmarks.yaml), the size the CI guard affords.

The regression guard (``tests/benchmarks/test_speed_guard.py``) compares the guarded ratios with the floors
stored per guarded preset (``FLOORS_PATHS``); regenerate them deliberately with
``python -m bench.perf.speed [--preset paper-guard] --write-floors --sessions 3 --rounds 9`` (see
``tests/benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bench.perf.noise_share import noise_draw
from lsrs.bounds import clopper_pearson_lower, gaussian_radius
from lsrs.flops import count_flops
from lsrs.inference import fold_batchnorm
from lsrs.models import Split, resnet18
from lsrs.noise import derive_seed
from lsrs.smoothing import ABSTAIN, PRECISIONS, LatentSmooth, Smooth
from lsrs.timing import Stopwatch

FLOORS_PATH = Path(__file__).parents[1] / "data" / "speed_floors.json"
FLOORS_COMMAND = "python -m bench.perf.speed --write-floors --sessions 3 --rounds 9"
#: Forward variants of the overhead floor: (BatchNorm folded, channels_last memory).
FORWARD_VARIANTS: dict[str, tuple[bool, bool]] = {
    "folded/channels_last": (True, True),
    "folded/contiguous": (True, False),
    "bn/channels_last": (False, True),
    "bn/contiguous": (False, False),
}
DEFAULT_MARGIN = 0.15
SLOWDOWN_ENV = "LSRS_SPEED_SLOWDOWN"
ROUNDS_ENV = "LSRS_SPEED_ROUNDS"


# ====================================================================== configuration
#: The suite's case key of the input-space baseline (FoR 0) and the prefix of the FoR-k twins' keys (``ls9``);
#: stored floors and timings are keyed by them (``certify/is/fp32``).
BASELINE = "is"
LATENT = "ls"


@dataclass(frozen=True)
class SpeedConfig:
    """The fixed benchmark problem: a small random-weight ResNet18 and one image, CERTIFY with n0 + n samples.

    ``threads`` torch threads (``None``: torch's default) and the ``clock`` (``cpu``: process CPU time,
    ``wall``) are part of the measurement: one thread's CPU time is what stays stable on a machine shared with
    other jobs. ``fold_bn`` / ``channels_last`` are the options the engine gets, unless ``plain_api``: then the
    smoothers are built with no options from the unmodified models (the library's defaults decide).
    ``floor_variants`` (keys of ``FORWARD_VARIANTS``): time the pure forward in each variant and take the
    fastest (smallest median over rounds) as the floor; empty: one forward in the engine's own configuration.
    """

    width: int = 24
    in_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    fors: tuple[int, ...] = (1, 5, 9, 13)
    n0: int = 100
    n: int = 1_000
    batch_size: int = 64
    sigma: float = 0.25
    alpha: float = 0.001
    seed: int = 0
    channels_last: bool = True
    precisions: tuple[str, ...] = ("fp32", "bf16")
    matmul_size: int = 1024
    threads: int | None = 1
    clock: str = "cpu"
    fold_bn: bool = True
    plain_api: bool = False
    floor_variants: tuple[str, ...] = ()

    def methods(self) -> list[str]:
        """The suite's case keys: :data:`BASELINE`, then ``ls{k}`` per FoR k."""
        return [BASELINE, *(f"{LATENT}{k}" for k in self.fors)]

    def as_json(self) -> dict:
        """The config as stored in JSON (tuples become lists), for comparing with a stored one."""
        return json.loads(json.dumps(asdict(self)))


#: Named configurations (see the module docstring); ``bench`` is the default and the CI guard's first case.
SPEED_CONFIGS: dict[str, SpeedConfig] = {
    "bench": SpeedConfig(),
    "paper": SpeedConfig(width=64, fors=(9, 13), batch_size=200, precisions=("fp32",), threads=None,
                         fold_bn=False, channels_last=False, plain_api=True, floor_variants=tuple(FORWARD_VARIANTS)),
    "paper-guard": SpeedConfig(width=64, fors=(9, 13), n=200, batch_size=200, precisions=("fp32",), threads=None,
                               fold_bn=False, channels_last=False, plain_api=True,
                               floor_variants=("folded/channels_last",)),
}

#: Where each guarded preset's floors live, and the command that records them.
FLOORS_PATHS: dict[str, Path] = {"bench": FLOORS_PATH,
                                 "paper-guard": FLOORS_PATH.with_name("speed_floors_paper.json")}


def floors_command(preset: str) -> str:
    return FLOORS_COMMAND if preset == "bench" else FLOORS_COMMAND.replace(" --write", f" --preset {preset} --write")


def _fors_of(method: str) -> int:
    return 0 if method == BASELINE else int(method.removeprefix(LATENT))


def machine_signature() -> dict:
    """What the stored floors depend on: processor model, its logical CPUs, bf16 support, torch version."""
    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            info = fh.read()
    except OSError:
        info = ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            cpu = value.strip()
        elif key.strip() == "flags":
            flags = value
            break
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "torch": torch.__version__.split("+")[0],
    }


# ====================================================================== the reference loop (Cohen et al.)
class ReferenceSmooth:
    """Cohen et al. (2019) ``code/core.py`` ``Smooth``, re-implemented faithfully (CERTIFY only).

    Per batch: ``x.repeat``, ``torch.randn_like(...) * sigma``, ``base_classifier(batch + noise).argmax(1)``,
    ``.cpu().numpy()`` and a Python loop that counts predictions, exactly as the reference does; the lower
    bound is the same Clopper-Pearson bound (``proportion_confint(alpha=2*alpha, method="beta")[0]``).
    Noise comes from torch's global generator, as in the reference.
    """

    ABSTAIN = ABSTAIN

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float) -> None:
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = sigma

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int) -> tuple[int, float]:
        self.base_classifier.eval()
        counts_selection = self._sample_noise(x, n0, batch_size)
        c_a_hat = counts_selection.argmax().item()
        counts_estimation = self._sample_noise(x, n, batch_size)
        n_a = counts_estimation[c_a_hat].item()
        p_a_bar = self._lower_confidence_bound(n_a, n, alpha)
        if p_a_bar < 0.5:
            return ReferenceSmooth.ABSTAIN, 0.0
        return c_a_hat, gaussian_radius(self.sigma, p_a_bar)

    def _sample_noise(self, x: torch.Tensor, num: int, batch_size: int) -> np.ndarray:
        with torch.no_grad():
            counts = np.zeros(self.num_classes, dtype=int)
            for _ in range(math.ceil(num / batch_size)):
                this_batch_size = min(batch_size, num)
                num -= this_batch_size
                batch = x.repeat((this_batch_size, 1, 1, 1))
                noise = torch.randn_like(batch, device=x.device) * self.sigma
                predictions = self.base_classifier(batch + noise).argmax(1)
                counts += self._count_arr(predictions.cpu().numpy(), self.num_classes)
            return counts

    def _count_arr(self, arr: np.ndarray, length: int) -> np.ndarray:
        counts = np.zeros(length, dtype=int)
        for idx in arr:
            counts[idx] += 1
        return counts

    def _lower_confidence_bound(self, n_a: int, n: int, alpha: float) -> float:
        return clopper_pearson_lower(int(n_a), int(n), alpha)


# ====================================================================== models, FLOPs, fault injection
def build_models(cfg: SpeedConfig, device: torch.device | str = "cpu") -> dict[int, Split]:
    """The baseline (key 0) and one twin per FoR, random weights from fixed seeds, eval mode."""
    models = {}
    for k in (0, *cfg.fors):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "speed-model", k) % 2**31)
            m = resnet18(cfg.num_classes, k, cfg.width, cfg.in_size, cfg.in_channels)
        models[k] = m.to(device).eval()
    return models


def _forward_variant(classifier: nn.Module, inp: torch.Tensor, fold: bool, channels_last: bool,
                     ) -> tuple[nn.Module, torch.Tensor]:
    """A private copy of ``classifier`` (BatchNorm folded or not, in the given memory format) and its input."""
    module = fold_batchnorm(classifier) if fold else copy.deepcopy(classifier).eval()
    if inp.dim() != 4:
        return module, inp
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return module.to(memory_format=fmt), inp.contiguous(memory_format=fmt)


def with_fastest_forward(timings: list[dict[str, float]]) -> tuple[list[dict[str, float]], dict[str, str]]:
    """Rounds with ``forward/<m>/<p>`` set to the times of its fastest variant, and the variant chosen per base.

    The fastest variant of each ``forward/<m>/<p>/<variant>`` family is the one with the smallest median time
    over all rounds; every round then uses that variant's own time. Taking instead the minimum over variants
    in every round would bias the floor down whenever two variants are about as fast: the minimum of two
    noisy, equally fast measurements is below either one's typical value (by ``sigma / sqrt(pi)`` for two
    Gaussian measurements), and every overhead above it would grow by that amount.
    """
    families: dict[str, list[str]] = {}
    for key in timings[0]:
        parts = key.split("/", 3)
        if parts[0] == "forward" and len(parts) == 4:
            families.setdefault("/".join(parts[:3]), []).append(key)
    chosen = {base: min(keys, key=lambda k: (statistics.median(t[k] for t in timings), k))
              for base, keys in families.items()}
    rounds = [{**t, **{base: t[key] for base, key in chosen.items()}} for t in timings]
    return rounds, {base: key.split("/", 3)[3] for base, key in chosen.items()}


class Slowed(nn.Module):
    """Fault injection: runs ``inner``, then busy-waits ``factor - 1`` times the CPU time it took.

    A deliberate engine regression that both clocks see (busy work shows in CPU time, unlike a sleep).
    """

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner = inner
        self.factor = float(factor)
        self.train(inner.training)  # an eval-mode classifier stays one (the library folds only eval modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.process_time()
        out = self.inner(x)
        end = time.process_time() + max(0.0, (self.factor - 1.0) * (time.process_time() - t0))
        while time.process_time() < end:
            pass
        return out


def parse_slowdown(text: str | None) -> dict[str, float]:
    """``LSRS_SPEED_SLOWDOWN``: ``"1.5"`` slows every engine path; ``"ls=1.5"`` or ``"is=1.5"`` one of them."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        target, _, factor = part.rpartition("=")
        value = float(factor)
        if not value >= 1.0:
            raise ValueError(f"{SLOWDOWN_ENV} factors must be >= 1, got {part!r}")
        for t in ([target] if target else [BASELINE, LATENT]):
            if t not in (BASELINE, LATENT):
                raise ValueError(f"{SLOWDOWN_ENV} target must be '{BASELINE}' or '{LATENT}', got {t!r}")
            out[t] = value
    return out


# ====================================================================== the suite of timed cases
@dataclass
class SpeedSuite:
    """All timed cases of one configuration, built once (models, inputs, smoothers)."""

    cfg: SpeedConfig = field(default_factory=SpeedConfig)
    device: torch.device | str = "cpu"
    slowdown: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.device = torch.device(self.device)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.models = build_models(cfg, self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "speed-image") % 2**31)
            self.image = torch.rand(cfg.in_channels, cfg.in_size, cfg.in_size).to(self.device)
        # The reference loop gets its own plain copy of the baseline (contiguous fp32, as core.py uses it).
        self.reference = ReferenceSmooth(copy.deepcopy(self.models[0]), cfg.num_classes, cfg.sigma)
        if cfg.fold_bn:  # the engine's inference rewrite (bench run --fold-bn, the default); core.py has none
            self.models = {k: fold_batchnorm(m) for k, m in self.models.items()}
        self.flops: dict[str, int] = {}
        self.latent_shape: dict[str, tuple[int, ...]] = {}
        self.forward_input: dict[str, torch.Tensor] = {}
        self.base: dict[str, nn.Module] = {}
        self.variants: dict[tuple[str, str], tuple[nn.Module, torch.Tensor]] = {}
        self.smoothers: dict[tuple[str, str], LatentSmooth] = {}
        self.classifiers: dict[str, nn.Module] = {}
        gen = torch.Generator(device="cpu").manual_seed(derive_seed(cfg.seed, "speed-forward") % 2**31)
        for method in cfg.methods():
            model = self.models[_fors_of(method)]
            with torch.inference_mode():
                z = model.encoder(self.image.unsqueeze(0)).float()
            self.latent_shape[method] = tuple(z.shape[1:])
            self.flops[method] = count_flops(model.classifier, z)
            noise = torch.randn((cfg.batch_size, *z.shape[1:]), generator=gen).to(self.device)
            fwd = z + cfg.sigma * noise
            for variant in cfg.floor_variants:
                self.variants[(method, variant)] = _forward_variant(model.classifier, fwd, *FORWARD_VARIANTS[variant])
            classifier = (model if method == BASELINE else model.classifier) if cfg.plain_api else (
                model.classifier.to(memory_format=fmt) if z.dim() == 4 else model.classifier)
            if not cfg.floor_variants:
                self.base[method] = classifier
                self.forward_input[method] = fwd.contiguous(memory_format=fmt) if fwd.dim() == 4 else fwd
            self.classifiers[method] = classifier
            factor = self.slowdown.get(BASELINE if method == BASELINE else LATENT)
            for precision in cfg.precisions:
                self.smoothers[(method, precision)] = self.smoother(method, precision, factor)
        n = cfg.matmul_size
        self._mm = {p: (torch.randn(n, n, generator=gen).to(self.device, PRECISIONS[p] or torch.float32),
                        torch.randn(n, n, generator=gen).to(self.device, PRECISIONS[p] or torch.float32))
                    for p in cfg.precisions}

    def smoother(self, method: str, precision: str, slowdown: float | None = None) -> LatentSmooth:
        """The smoother of ``method`` as this config builds it; ``slowdown``: its classifier wrapped in
        :class:`Slowed` (a deliberate regression)."""
        cfg, model = self.cfg, self.models[_fors_of(method)]
        classifier = self.classifiers[method]
        if slowdown:
            classifier = Slowed(classifier, slowdown)
        if cfg.plain_api:  # the README call: no options, the library's defaults decide
            if method == BASELINE:
                return Smooth(classifier, cfg.num_classes, cfg.sigma)
            return LatentSmooth(model.encoder, classifier, cfg.num_classes, cfg.sigma, model.encoder_lipschitz)
        options = dict(device=self.device, precision=precision, channels_last=cfg.channels_last)
        if method == BASELINE:
            return Smooth(classifier, cfg.num_classes, cfg.sigma, **options)
        return LatentSmooth(model.encoder, classifier, cfg.num_classes, cfg.sigma, model.encoder_lipschitz, **options)

    # ---------------------------------------------------------------- the callables
    def batches(self) -> list[int]:
        """The batch sizes one CERTIFY runs: ``n0`` samples, then ``n``, each in batches of ``batch_size``."""
        b = self.cfg.batch_size
        return [min(b, num - done) for num in (self.cfg.n0, self.cfg.n) for done in range(0, num, b)]

    def forward_fn(self, method: str, precision: str, variant: str | None = None) -> Callable[[], object]:
        """The pure forwards of one CERTIFY (:meth:`batches`) on fixed inputs; returns the last logits.

        ``variant`` (one of ``cfg.floor_variants``): that rewrite of the classifier; None: the engine's own."""
        module, inp = self.variants[(method, variant)] if variant else (self.base[method], self.forward_input[method])
        batches = self.batches()
        dtype = PRECISIONS[precision]
        autocast = (contextlib.nullcontext() if dtype is None
                    else torch.autocast(device_type=self.device.type, dtype=dtype))

        def run() -> torch.Tensor:
            with torch.inference_mode(), autocast:
                for b in batches:
                    out = module(inp[:b])
            return out

        return run

    def certify_fn(self, method: str, precision: str, smoother: LatentSmooth | None = None) -> Callable[[], object]:
        """One CERTIFY of the suite's image by ``method``'s smoother (or by ``smoother``, with the same seed)."""
        sm, cfg, x = smoother or self.smoothers[(method, precision)], self.cfg, self.image
        seed = derive_seed(cfg.seed, "speed-certify", method)
        return lambda: sm.certify(x, cfg.n0, cfg.n, cfg.alpha, cfg.batch_size, generator=seed)

    def noise_fn(self, method: str) -> Callable[[], object]:
        """The noise draws of one CERTIFY of ``method`` (fp32 smoother's stream), nothing else."""
        cfg = self.cfg
        return noise_draw(self.smoothers[(method, "fp32")], self.latent_shape[method], cfg.n0, cfg.n, cfg.batch_size,
                          (derive_seed(cfg.seed, "speed-noise", method), "certify"))

    def reference_fn(self) -> Callable[[], object]:
        cfg, ref, x = self.cfg, self.reference, self.image

        def run() -> tuple[int, float]:
            torch.manual_seed(derive_seed(cfg.seed, "speed-reference") % 2**31)
            return ref.certify(x, cfg.n0, cfg.n, cfg.alpha, cfg.batch_size)

        return run

    def matmul_fn(self, precision: str) -> Callable[[], object]:
        a, b = self._mm[precision]
        return lambda: torch.mm(a, b)

    def cases(self, methods: list[str] | None = None) -> dict[str, Callable[[], object]]:
        """The timed cases, keyed ``kind/method/precision`` (see the module docstring); ``methods`` limits the
        fp32 forward/certify pairs to those methods (IS, the reference loop and the matmuls are always in)."""
        methods = self.cfg.methods() if methods is None else [BASELINE, *(m for m in methods if m != BASELINE)]
        out: dict[str, Callable[[], object]] = {}
        for p in self.cfg.precisions:
            out[f"matmul/-/{p}"] = self.matmul_fn(p)
        for m in methods:
            for v in self.cfg.floor_variants:
                out[f"forward/{m}/fp32/{v}"] = self.forward_fn(m, "fp32", v)
            if not self.cfg.floor_variants:
                out[f"forward/{m}/fp32"] = self.forward_fn(m, "fp32")
            out[f"certify/{m}/fp32"] = self.certify_fn(m, "fp32")
            out[f"noise/{m}/fp32"] = self.noise_fn(m)
        for p in self.cfg.precisions:
            if p != "fp32":
                out[f"forward/is/{p}"] = self.forward_fn("is", p)
                out[f"certify/is/{p}"] = self.certify_fn("is", p)
        out["reference/is/fp32"] = self.reference_fn()
        return out


# ====================================================================== measuring
CLOCKS = ("cpu", "wall")


def time_call(fn: Callable[[], object], device: torch.device | str, clock: str = "wall") -> float:
    """Seconds one call of ``fn`` takes.

    ``wall``: CUDA events with a synchronisation on GPU, ``perf_counter`` on CPU. ``cpu``: the process's CPU
    time (``time.process_time``), which a shared machine cannot inflate by descheduling us; on CUDA the
    clock is always ``wall`` (the work is on the device).
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    if clock == "cpu" and torch.device(device).type == "cpu":
        t0 = time.process_time()
        fn()
        return time.process_time() - t0
    with Stopwatch(device) as sw:
        fn()
    return sw.seconds


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)`` (``None``: unchanged), restoring the old value."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def measure(cases: dict[str, Callable[[], object]], rounds: int, device: torch.device | str = "cpu",
            warmup: int = 1, clock: str = "wall", progress: Callable[[str], None] | None = None,
            ) -> list[dict[str, float]]:
    """Time every case once per round, interleaved, the order reversed every other round (ABBA).

    ``progress`` is called with the name of each case after it ran (warm-up calls included).
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
            if progress:
                progress(name)
    out = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        timed = {}
        for name in order:
            timed[name] = time_call(cases[name], device, clock)
            if progress:
                progress(name)
        out.append(timed)
    return out


@contextlib.contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr over ``total`` timed calls; yields the ``progress`` callback of :func:`measure`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[case]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total, case="")
        yield lambda name: bar.update(task, advance=1, case=name)


def measured_methods(t: dict[str, float]) -> list[str]:
    """The methods with an fp32 certify timing in ``t``, IS first, then LS by FoR."""
    ms = {k.split("/")[1] for k in t if k.startswith("certify/") and k.endswith("/fp32")}
    return sorted(ms, key=_fors_of)


def round_ratios(t: dict[str, float], suite: SpeedSuite) -> dict[str, float]:
    """All ratios from one round of timings ``t`` (seconds per case)."""
    cfg = suite.cfg
    samples = cfg.n0 + cfg.n
    methods = measured_methods(t)
    r: dict[str, float] = {}
    per_sample = {m: t[f"forward/{m}/fp32"] / samples for m in methods}
    for m in methods:
        r[f"overhead[{m}]"] = t[f"certify/{m}/fp32"] / t[f"forward/{m}/fp32"]
        r[f"efficiency[{m}]"] = 1.0 / r[f"overhead[{m}]"]
        r[f"gflops[{m}/fp32]"] = suite.flops[m] * samples / t[f"certify/{m}/fp32"] / 1e9
        if f"noise/{m}/fp32" in t:
            r[f"noise_share[{m}]"] = t[f"noise/{m}/fp32"] / t[f"certify/{m}/fp32"]
    for m in methods[1:]:
        r[f"speedup[{m}]"] = t["certify/is/fp32"] / t[f"certify/{m}/fp32"]
        r[f"time_ideal[{m}]"] = per_sample["is"] / per_sample[m]
        r[f"ideal_fraction[{m}]"] = r[f"speedup[{m}]"] / r[f"time_ideal[{m}]"]
        r[f"flop_ideal[{m}]"] = suite.flops["is"] / suite.flops[m]
        r[f"flop_ideal_fraction[{m}]"] = r[f"speedup[{m}]"] / r[f"flop_ideal[{m}]"]
    for p in cfg.precisions:
        r[f"peak_gflops[{p}]"] = 2 * cfg.matmul_size**3 / t[f"matmul/-/{p}"] / 1e9
        r[f"vs_reference[{p}]"] = t["reference/is/fp32"] / t[f"certify/is/{p}"]
        if p != "fp32":
            fwd = t[f"forward/is/{p}"] / samples
            r[f"overhead[is/{p}]"] = t[f"certify/is/{p}"] / t[f"forward/is/{p}"]
            r[f"gflops[is/{p}]"] = suite.flops["is"] * samples / t[f"certify/is/{p}"] / 1e9
            r[f"forward_speedup[is/{p}]"] = per_sample["is"] / fwd
            r[f"peak_fraction[is/{p}]"] = r[f"gflops[is/{p}]"] / r[f"peak_gflops[{p}]"]
    for m in methods:
        r[f"peak_fraction[{m}/fp32]"] = r[f"gflops[{m}/fp32]"] / r["peak_gflops[fp32]"]
    r["reference_overhead[is]"] = t["reference/is/fp32"] / (samples * per_sample["is"])
    return r


@dataclass
class SpeedResult:
    """Medians of the per-round ratios and of the per-case times, with the raw rounds."""

    cfg: SpeedConfig
    times: dict[str, float]
    ratios: dict[str, float]
    spread: dict[str, tuple[float, float]]
    rounds: list[dict[str, float]]
    flops: dict[str, int]
    machine: dict
    stat: str = "median"
    floor_variant: dict[str, str] = field(default_factory=dict)  # forward/<m>/<p> -> its fastest variant

    def to_json(self) -> dict:
        return {"config": self.cfg.as_json(), "machine": self.machine, "stat": self.stat, "times_s": self.times,
                "floor_variant": self.floor_variant,
                "ratios": self.ratios, "flops": self.flops,
                "spread": {k: list(v) for k, v in self.spread.items()}, "rounds_s": self.rounds}


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


STATS = ("median", "min")


def run_speed(suite: SpeedSuite, rounds: int, warmup: int = 1, methods: list[str] | None = None,
              stat: str = "median", show_progress: bool = False,
              extra_cases: dict[str, Callable[[], object]] | None = None) -> SpeedResult:
    """Measure ``suite`` for ``rounds`` interleaved rounds (with ``cfg.threads`` torch threads and ``cfg.clock``).

    ``stat="median"`` (the guard's): every ratio is computed per round, then the median over rounds.
    ``stat="min"``: ratios of the per-case minimum times, an estimate of the uncontended machine when other
    jobs share it and the wall clock must be used (e.g. several torch threads); quartiles stay per round.
    ``extra_cases`` are timed in the same rounds (kept in ``rounds``, read back by :func:`substituted`).
    """
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    cfg = suite.cfg
    cases = {**suite.cases(methods), **(extra_cases or {})}
    bar = (progress_bar(len(cases) * (rounds + warmup), f"timing {len(cases)} cases x {rounds} rounds")
           if show_progress else contextlib.nullcontext(None))
    with torch_threads(cfg.threads), bar as progress:
        timings = measure(cases, rounds, suite.device, warmup=warmup, clock=cfg.clock, progress=progress)
        timings, floor_variant = with_fastest_forward(timings)
        machine = {**machine_signature(), "torch_threads": torch.get_num_threads()}
    return replace(summarise(timings, suite, machine, stat), floor_variant=floor_variant)


def substituted(result: SpeedResult, suite: SpeedSuite, case: str, by: str) -> SpeedResult:
    """``result`` recomputed from its own rounds with the time of ``case`` replaced by that of ``by`` (a case
    timed in the same rounds): what the guard would have measured had ``by`` been the code under test."""
    timings = [{**t, case: t[by]} for t in result.rounds]
    return replace(summarise(timings, suite, result.machine, result.stat), floor_variant=result.floor_variant)


def summarise(timings: list[dict[str, float]], suite: SpeedSuite, machine: dict, stat: str) -> SpeedResult:
    """Per-case times and ratios (the median over rounds of per-round ratios, or of the minimum times)."""
    per_round = [round_ratios(t, suite) for t in timings]
    spread = {k: _quartiles([r[k] for r in per_round]) for k in per_round[0]}
    if stat == "min":
        times = {k: min(t[k] for t in timings) for k in timings[0]}
        ratios = round_ratios(times, suite)
    else:
        times = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
        ratios = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    return SpeedResult(suite.cfg, times, ratios, spread, timings, dict(suite.flops), machine, stat)


# ====================================================================== the guard
class Guarded(NamedTuple):
    """How a ratio is guarded: ``portable`` ratios (engine overheads) are enforced on any machine, the others
    (channels_last and bf16 gains of this CPU's kernels) only on the machine the floors were recorded on;
    ``margin`` is the allowed relative drop below the floor."""

    portable: bool
    margin: float


#: Guarded ratios, all higher-is-better. The reference loop's share of memory-bound work makes "vs reference"
#: move more with the machine's load (its spread between sessions: docs/data/benchmarks.yaml) than the
#: overhead ratios (a few percent), hence its wider margin; a 1.5x engine slowdown (a 33% drop) still fails both.
GUARDED: dict[str, Guarded] = {
    "efficiency[is]": Guarded(True, DEFAULT_MARGIN),
    "efficiency[ls9]": Guarded(True, DEFAULT_MARGIN),
    "efficiency[ls13]": Guarded(True, DEFAULT_MARGIN),
    "ideal_fraction[ls9]": Guarded(True, DEFAULT_MARGIN),
    "ideal_fraction[ls13]": Guarded(True, DEFAULT_MARGIN),
    "vs_reference[fp32]": Guarded(False, 0.25),
    "vs_reference[bf16]": Guarded(False, 0.25),
}

#: The methods the guard measures (IS and the FoRs with targets); ``--all`` / ``LSRS_SPEED_ALL=1`` adds the rest.
GUARD_METHODS = ["is", "ls9", "ls13"]

#: The issue's targets (2 CPU cores): ratio -> (bound, ">=" or "<=").
TARGETS: dict[str, tuple[float, str]] = {
    "overhead[is]": (1.15, "<="),
    "overhead[ls9]": (1.15, "<="),
    "overhead[ls13]": (1.15, "<="),
    "ideal_fraction[ls9]": (0.90, ">="),
    "ideal_fraction[ls13]": (0.90, ">="),
    "vs_reference[fp32]": (1.3, ">="),
    "vs_reference[bf16]": (2.5, ">="),
}


def load_floors(path: Path = FLOORS_PATH) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def same_machine(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("cpu", "cpus", "avx512_bf16"))


@dataclass(frozen=True)
class GuardLine:
    name: str
    measured: float
    floor: float
    allowed: float
    enforced: bool

    @property
    def ok(self) -> bool:
        return (not self.enforced) or self.measured >= self.allowed


def check_floors(result: SpeedResult, floors: dict) -> list[GuardLine]:
    """Compare the guarded ratios with the stored floors: a ratio fails below ``floor * (1 - margin)``.

    On a machine other than the one the floors were recorded on, only the portable ratios are enforced.
    """
    same = same_machine(result.machine, floors.get("machine", {}))
    lines = []
    for name, entry in floors["ratios"].items():
        if name not in result.ratios:
            continue
        floor, margin = float(entry["floor"]), float(entry["margin"])
        enforced = same or bool(entry["portable"])
        lines.append(GuardLine(name, result.ratios[name], floor, floor * (1 - margin), enforced))
    return lines


def floors_from(results: list[SpeedResult], command: str = FLOORS_COMMAND) -> dict:
    """Floors = the minimum of each guarded ratio over ``results`` (several sessions of the same command)."""
    first = results[0]
    return {
        "about": "Minimum same-run speed ratios of the certification engine (bench/perf/speed.py). The guard "
                 "tests/benchmarks/test_speed_guard.py fails when a ratio drops below floor * (1 - margin). "
                 "Regenerate deliberately with the command below and commit the file with the change that "
                 "moved them (see tests/benchmarks/README.md).",
        "command": command,
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": first.machine,
        "config": first.cfg.as_json(),
        "ratios": {
            name: {
                "floor": round(min(r.ratios[name] for r in results), 4),
                "margin": guard.margin,
                "portable": guard.portable,
                "measured": [round(r.ratios[name], 4) for r in results],
            }
            for name, guard in GUARDED.items()
            if name in first.ratios
        },
    }


# ====================================================================== the table
def format_table(result: SpeedResult, guard: list[GuardLine] | None = None) -> str:
    """The ratio table (plain text), then the issue's targets and, if given, the guard lines."""
    cfg, r, t = result.cfg, result.ratios, result.times
    samples = cfg.n0 + cfg.n
    q = result.spread
    lines = [
        f"ResNet18 width {cfg.width}, input {cfg.in_channels}x{cfg.in_size}x{cfg.in_size}, random weights; CERTIFY "
        f"n0={cfg.n0} n={cfg.n}, batch {cfg.batch_size}, "
        + ("README call with no options (library defaults)" if cfg.plain_api else
           f"fold_bn={cfg.fold_bn} channels_last={cfg.channels_last}"),
        f"{result.machine['cpu']} ({result.machine['cpus']} CPUs), "
        f"{result.machine.get('torch_threads', cfg.threads)} torch thread(s), {cfg.clock} clock; "
        + (f"medians of {len(result.rounds)} interleaved rounds (ratios per round, then the median)"
           if result.stat == "median" else
           f"minimum time of each case over {len(result.rounds)} interleaved rounds, ratios of those"),
        "matmul peak: " + ", ".join(f"{p} {r[f'peak_gflops[{p}]']:.1f} GFLOP/s" for p in cfg.precisions),
        "",
        f"{'config':<18}{'MFLOP/smp':>10}{'fwd us/smp':>11}{'certify s':>10}{'overhead':>9}{'LS/IS':>7}"
        f"{'t-ideal':>8}{'%t-ideal':>9}{'F-ideal':>8}{'%F-ideal':>9}{'GFLOP/s':>8}{'%peak':>6}{'noise':>7}{'vs ref':>8}",
    ]

    def row(label: str, m: str, p: str) -> str:
        fwd = t[f"forward/{m}/{p}"] / samples * 1e6
        ovh = r[f"overhead[{m}]"] if p == "fp32" else r[f"overhead[{m}/{p}]"]
        if m != BASELINE and p == "fp32":
            ls = (f"{r[f'speedup[{m}]']:>7.2f}{r[f'time_ideal[{m}]']:>8.2f}{100 * r[f'ideal_fraction[{m}]']:>8.0f}%"
                  f"{r[f'flop_ideal[{m}]']:>8.2f}{100 * r[f'flop_ideal_fraction[{m}]']:>8.0f}%")
        else:
            ls = f"{'':>7}{'':>8}{'':>9}{'':>8}{'':>9}"
        vs = f"{r[f'vs_reference[{p}]']:>7.2f}x" if m == BASELINE else ""
        share = r.get(f"noise_share[{m}]") if p == "fp32" else None
        noise = f"{100 * share:>6.1f}%" if share is not None else f"{'':>7}"
        return (f"{label:<18}{result.flops[m] / 1e6:>10.1f}{fwd:>11.1f}{t[f'certify/{m}/{p}']:>10.3f}"
                f"{ovh:>9.3f}{ls}{r[f'gflops[{m}/{p}]']:>8.1f}{100 * r[f'peak_fraction[{m}/{p}]']:>5.0f}%{noise}{vs}")

    for m in measured_methods(t):
        lines.append(row("IS-RS fp32" if m == BASELINE else f"LS-RS FoR {_fors_of(m)} fp32", m, "fp32"))
    for p in cfg.precisions:
        if p != "fp32":
            lines.append(row(f"IS-RS {p}", "is", p))
    lines.append(f"{'reference IS fp32':<18}{result.flops['is'] / 1e6:>10.1f}{'':>11}{t['reference/is/fp32']:>10.3f}"
                 f"{r['reference_overhead[is]']:>9.3f}   Cohen et al. core.py loop on a plain fp32 copy")
    lines += [
        "",
        f"overhead = certify / its pure forwards (the same {samples} = n0 + n samples in batches of "
        f"{cfg.batch_size}, on fixed inputs); over n samples alone it would be {samples / cfg.n:.3f}x larger",
        "t-ideal = forward(baseline) / forward(fc) per sample; F-ideal = FLOPs(baseline) / FLOPs(fc); "
        "vs ref = reference loop fp32 / engine",
        "noise = time of drawing one certificate's noise alone (the engine's stream, same batches) / certify time",
        *([f"pure forward = the fastest by median time of: {', '.join(cfg.floor_variants)}; median us/sample: "
           + "; ".join(f"{m} " + " ".join(f"{v} {t[f'forward/{m}/fp32/{v}'] / samples * 1e6:.0f}"
                                          for v in cfg.floor_variants) for m in measured_methods(t)),
           "floor variant: " + "; ".join(f"{m} {result.floor_variant.get(f'forward/{m}/fp32', '?')}"
                                         for m in measured_methods(t))]
          if cfg.floor_variants else []),
        "",
        "targets (issues 9, 15):",
    ]
    for name, (bound, op) in TARGETS.items():
        if name in r:
            ok = r[name] <= bound if op == "<=" else r[name] >= bound
            lo, hi = q[name]
            lines.append(f"  {name:<22}{r[name]:>7.3f}  (IQR {lo:.3f}-{hi:.3f})  target {op} {bound:<5} "
                         f"{'met' if ok else 'NOT MET'}")
    if guard is not None:
        lines += ["", "guard (a ratio fails below floor x (1 - margin)):"]
        for g in guard:
            status = ("ok" if g.ok else "REGRESSION") if g.enforced else "not enforced (other machine)"
            lines.append(f"  {g.name:<22}{g.measured:>7.3f}  floor {g.floor:.3f}  allowed >= {g.allowed:.3f}  "
                         f"{status}")
    return "\n".join(lines)


# ====================================================================== command line
def rounds_from_env(default: int) -> int:
    value = os.environ.get(ROUNDS_ENV)
    return max(1, int(value)) if value else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(SPEED_CONFIGS), default="bench",
                        help="bench: width 24, 1 thread, engine options [default]; paper: width 64, batch 200, "
                             "default threads, README call; paper-guard: paper at the CI guard's size")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per session [9]")
    parser.add_argument("--sessions", type=int, default=1, help="independent sessions; floors take the minimum [1]")
    parser.add_argument("--all", action="store_true", help="every FoR of the config, not only the guarded ones")
    parser.add_argument("--threads", type=int, help="torch threads, 0 = torch's default [of the preset]")
    parser.add_argument("--width", type=int, help=f"ResNet18 base width [{SpeedConfig.width}]")
    parser.add_argument("--in-size", type=int, help=f"input side [{SpeedConfig.in_size}]")
    parser.add_argument("--n", type=int, help=f"estimation samples [{SpeedConfig.n}]")
    parser.add_argument("--clock", choices=CLOCKS, help=f"[{SpeedConfig.clock}]")
    parser.add_argument("--stat", choices=STATS, default="median",
                        help="median of per-round ratios [median], or ratios of per-case minimum times")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write-floors", action="store_true", help=f"write bench/data/{FLOORS_PATH.name}")
    parser.add_argument("--json", type=Path, help="also write the last session's ratios and times here")
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("threads", "clock", "width", "in_size", "n")
                 if getattr(args, k) is not None}
    if args.threads == 0:
        overrides["threads"] = None  # torch's default
    base = SPEED_CONFIGS[args.preset]
    cfg = replace(base, **overrides)
    floors_path = FLOORS_PATHS.get(args.preset)
    suite = SpeedSuite(cfg, device=args.device, slowdown=parse_slowdown(os.environ.get(SLOWDOWN_ENV)))
    methods = None if args.all else GUARD_METHODS
    floors = load_floors(floors_path) if floors_path and floors_path.exists() else None
    results = []
    for s in range(args.sessions):
        results.append(run_speed(suite, args.rounds, methods=methods, stat=args.stat, show_progress=True))
        guard = check_floors(results[-1], floors) if floors and floors.get("config") == cfg.as_json() else None
        print(f"--- session {s + 1}/{args.sessions}")
        print(format_table(results[-1], guard), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results[-1].to_json(), indent=2) + "\n")
    if args.write_floors:
        if args.stat != "median" or cfg != base or floors_path is None:
            parser.error(f"--write-floors records a guard's measurement: preset {' or '.join(FLOORS_PATHS)} "
                         "without overrides, --stat median")
        floors_path.write_text(json.dumps(floors_from(results, floors_command(args.preset)), indent=2) + "\n")
        print(f"wrote {floors_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
