"""IS-RS (``is``) and LS-RS (``ls``): CERTIFY of Cohen et al. (2019, Algorithm 1) on the smoothed classifier,
in input space (the baseline, FoR 0) or in the latent space of an orthogonal encoder (the FoR k twins; the
paper's Eq. 6: radius = latent radius / L). At σ = 0 both give the clean accuracy of the base network.

Each image's noise is seeded from (run seed, idx, method, FoR, σ) (:func:`lsrs.noise.derive_seed`), so rows do
not depend on which process certifies which images, or in what order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bench.certifiers.context import CertifyContext, RunSettings
from bench.certifiers.registry import Certifier, register_certifier
from bench.certifiers.rows import one_pass_row
from bench.errors import UsageError


def _n_values(config: RunSettings, sigma: float) -> tuple[int, ...]:
    return config.n_values if sigma > 0 else (0,)  # σ = 0: one clean pass, no samples


def input_space_jobs(config: RunSettings, sigma: float | None) -> list[tuple[int, float, int]]:
    """IS-RS: the baseline (FoR 0) at ``sigma``, at every n of the n axis."""
    return [] if sigma is None else [(0, sigma, n) for n in _n_values(config, sigma)]


def latent_space_jobs(config: RunSettings, sigma: float | None) -> list[tuple[int, float, int]]:
    """LS-RS: each FoR k > 0 of the run at ``sigma``, at every n of the n axis."""
    return [] if sigma is None else [(k, sigma, n) for k in config.fors if k > 0 for n in _n_values(config, sigma)]


def check_latent_fors(archs: list, fors: tuple[int, ...]) -> None:
    """The run's FoRs must be FoRs of the checkpoints' architectures; an architecture with FoR 0 only has no
    twin, and the run is told why in its record's words (:attr:`lsrs.architectures.Architecture.no_twin_reason`)."""
    valid = sorted({k for record in archs for k in record.fors})
    bad = [k for k in fors if archs and k not in valid]
    if bad and valid == [0]:
        raise UsageError("; ".join(dict.fromkeys(record.no_twin_reason for record in archs)))
    if bad:
        names = ", ".join(r.name for r in archs)
        raise UsageError(f"FoR {bad} invalid for {names}; valid: {','.join(map(str, valid))}", option="--fors")


def lattice_input(config: RunSettings, x: Any) -> Any:
    """With ``--noise lattice``, an image of a dataset whose loader computes off-lattice values (its record's
    ``input_lattice == "rounded"``, e.g. digits' upsampling) rounded once to the 8-bit lattice; others as loaded
    (an off-lattice image of a dataset that claims the lattice is refused by the smoother)."""
    if config.noise != "lattice":
        return x
    from lsrs.datasets import get_dataset
    from lsrs.lattice import to_input_lattice

    return to_input_lattice(x) if get_dataset(config.dataset).input_lattice == "rounded" else x


def start(context: CertifyContext, x: Any, batch_size: int | None, channels_last: bool | None) -> SmoothedRun | CleanRun:
    """σ > 0: the smoother; σ = 0: plain forwards of the base network."""
    return CleanRun(context, channels_last) if context.job.sigma == 0 else SmoothedRun(context, x, batch_size,
                                                                                        channels_last)


class CleanRun:
    """σ = 0: clean accuracy of the base network (the paper's σ = 0 rows), with the engine's rewrites; no
    certificate (radius 0)."""

    def __init__(self, context: CertifyContext, channels_last: bool | None) -> None:
        from lsrs.inference import inference_copy
        from lsrs.timing import Stopwatch

        self.context = context
        with Stopwatch(context.device) as watch:
            context.model = inference_copy(context.model, fold_bn=context.config.fold_bn,
                                           channels_last=channels_last is not False)
        context.setup_s["fold_bn"] = watch.seconds

    def rows(self, dataset: Any, indices: list[int], decided: set[tuple] | frozenset) -> Iterator[tuple[dict, list[dict]]]:
        import torch

        from lsrs.timing import Stopwatch

        context = self.context
        model = context.model
        for i in indices:
            x, label = dataset[i]
            with Stopwatch(context.device) as sw, torch.inference_mode():
                prediction = int(model(x.to(context.device).unsqueeze(0)).argmax(1).item())
            lipschitz = float(getattr(model, "encoder_lipschitz", 1.0))
            yield one_pass_row(context, i, int(label), prediction, 0.0, 0.0, lipschitz, samples_used=0,
                               sample_s=0.0, total_s=sw.seconds), []


class SmoothedRun:
    """σ > 0: the smoother, its first encode (builds the LS encoder's operator cache), batch size, compile and
    warm-up (all untimed, in ``setup_s``); then one CERTIFY per image, and its ``--decide-radii`` decisions."""

    def __init__(self, context: CertifyContext, x: Any, batch_size: int | None, channels_last: bool | None) -> None:
        from bench.certifiers.engine import auto_batch_size, compile_classifier, warm_up
        from lsrs.proofs import UnprovenModule
        from lsrs.smoothing import smooth_model
        from lsrs.timing import Stopwatch

        self.context = context
        config, device, job = context.config, context.device, context.job
        with Stopwatch(device) as watch:  # the smoother makes its folded copy of the classifier
            try:
                self.smoother = smooth_model(
                    context.model, context.num_classes, job.sigma, device=device, precision=config.precision,
                    fold_bn=config.fold_bn, channels_last=channels_last, trust_lipschitz=config.trust_lipschitz,
                    noise=config.noise,
                    noise_version=config.noise_stream,
                )
            except UnprovenModule as exc:  # one line: what has no proof, and the run's way out
                where = f"{exc.path or 'model'} ({type(exc.module).__name__})"
                raise UsageError(f"{job.label}: no proven Lipschitz bound for {where}: {exc.why}; certify only "
                                 "proven layers (lsrs.proofs), or vouch for the declared bound with "
                                 "--trust-lipschitz (recorded as lipschitz_source=trusted)") from None
        context.setup_s["fold_bn"] = watch.seconds
        x = lattice_input(config, x)
        with Stopwatch(device) as watch:
            latent_shape = tuple(self.smoother.encode(x).shape[1:])
        context.setup_s["first_encode"] = watch.seconds
        if config.noise == "lattice":  # an off-lattice image or a latent float32 cannot hold: one line
            try:
                self.smoother.noise_centre(self.smoother.encode(x))
            except ValueError as exc:
                raise UsageError(f"{job.label}: {str(exc).replace('noise=', '--noise ')}") from None
        with Stopwatch(device) as watch:
            batch = batch_size or auto_batch_size(self.smoother.classifier, latent_shape, job.n, device)
        context.setup_s["batch_probe"] = watch.seconds
        self.batch_size = context.batch_size = batch
        if config.compile != "off":
            self.smoother.classifier = compile_classifier(self.smoother.classifier, config.compile)
        context.warmup_s = warm_up(self.smoother, x, config.n0, job.n, batch)
        context.setup_s["warmup"] = context.warmup_s
        context.lipschitz_executed = self.smoother.executed_bound(tuple(x.shape)).lipschitz

    def rows(self, dataset: Any, indices: list[int], decided: set[tuple] | frozenset) -> Iterator[tuple[dict, list[dict]]]:
        from lsrs.noise import derive_seed

        context = self.context
        config, job, common = context.config, context.job, context.common
        smoother, batch = self.smoother, self.batch_size
        for i in indices:
            x, label = dataset[i]
            x = lattice_input(config, x)
            seed = derive_seed(config.seed, i, job.method, job.fors, job.sigma)
            cert = smoother.certify(x, config.n0, job.n, config.alpha, batch, generator=seed,
                                    sampler=config.sampler, certificate=config.certificate)
            decided_rows = [  # a decision has no n: the job at the smallest n of the axis makes it
                self._decision_row(i, int(label), x, r)
                for r in config.decide_radii
                if job.n == config.n_values[0] and (job.method, job.fors, job.sigma, i, float(r)) not in decided
            ]
            yield {
                **common,
                "idx": i,
                "label": int(label),
                "prediction": cert.prediction,
                "correct": cert.prediction == int(label),
                "radius": cert.radius,
                "radius_latent": cert.radius_latent,
                "lipschitz": cert.lipschitz,
                "lipschitz_declared": cert.lipschitz_declared,
                "lipschitz_source": cert.lipschitz_source,
                "latent_error": cert.latent_error,
                "p_a_lower": cert.p_a_lower,
                "p_b_upper": cert.p_b_upper,
                "sampler": cert.sampler,
                "certificate": cert.certificate,
                "noise": cert.noise,
                "quantization": cert.quantization,
                "counts_selection": list(cert.counts_selection),
                "counts_estimation": list(cert.counts_estimation),
                "n0": cert.n0,
                "n": cert.n,
                "samples_used": cert.samples_used,
                "encode_s": cert.encode_s,
                "sample_s": cert.sample_s,
                "total_s": cert.total_s,
                "batch_size": batch,
                "seed": seed,
            }, decided_rows

    def _decision_row(self, idx: int, label: int, x: Any, radius: float) -> dict:
        """One anytime-valid decision (``LatentSmooth.decide``) at input radius ``radius``."""
        from lsrs.noise import derive_seed

        context = self.context
        config, job, common = context.config, context.job, context.common
        seed = derive_seed(config.seed, idx, job.method, job.fors, job.sigma, "decide", float(radius))
        d = self.smoother.decide(x, radius, config.alpha, config.max_n, self.batch_size, generator=seed, n0=config.n0)
        return {
            "run": common["run"], "dataset": common["dataset"], "idx": idx, "label": label, "method": job.method,
            "fors": job.fors, "fors_total": common["fors_total"], "sigma": job.sigma, "radius": float(radius),
            "certified": d.certified, "prediction": d.prediction, "correct": bool(d.certified) and d.prediction == label,
            "p_required": d.p_required, "p_a_lower": d.p_a_lower, "p_a_upper": d.p_a_upper,
            "samples_used": d.samples_used, "max_n": config.max_n, "alpha": config.alpha, "total_s": d.total_s,
            "seed": seed, "device": common["device"],
        }


INPUT_SPACE = register_certifier(Certifier(
    key="is", defense="IS-RS", jobs=input_space_jobs, start=start, reference=True, color="black", line_style="--",
    help="IS-RS (Cohen et al. 2019) on the FoR-0 baseline",
))
LATENT_SPACE = register_certifier(Certifier(
    key="ls", defense="LS-RS", jobs=latent_space_jobs, start=start, fors_axis=True, check=check_latent_fors,
    help="LS-RS on the FoR twins",
))
