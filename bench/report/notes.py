"""What a run's numbers mean beyond the metric definitions: untimed set-up, Ray timings, digits / MNIST radii.

Each function reads the manifest (and the rows) of one run and returns bullet lines for the report's
"Definitions" section, or none when the run gives nothing to say.
"""

from __future__ import annotations

import pandas as pd

from bench import certifiers

SETUP = (
    "- **Set-up (not in time)**: per model, before its first timed image: loading and verifying the checkpoint, "
    "BatchNorm folding, the first encode (which builds the LS-RS encoder's Cayley operator cache), the batch-size "
    "probe and one warm-up certification (which also compiles the classifier under --compile); the manifest's `setup_s` has each "
    "stage's seconds per configuration."
)


def setup_note(manifest: dict) -> list[str]:
    """The set-up definition, with this run's range of set-up seconds per model when the manifest has them."""
    setup = manifest.get("setup_s")
    if not isinstance(setup, dict) or not setup:
        return [SETUP]
    totals = [float(s.get("total", 0.0)) for s in setup.values() if isinstance(s, dict)]
    encodes = [float(s.get("first_encode", 0.0)) for k, s in setup.items()  # job keys: <method>-f<FoR>-s<σ>[-n<n>]
               if certifiers.has_fors_axis(k.split("-")[0]) and isinstance(s, dict)]
    text = f" In this run: {min(totals):.3g} s to {max(totals):.3g} s per model"
    if encodes:
        text += f" (LS-RS first encode up to {max(encodes):.3g} s)"
    return [SETUP + text + "."]


def ray_note(manifest: dict) -> list[str]:
    """Under ``--ray``: whether tasks shared a node, and so whether timings compare with a single process."""
    cluster = manifest.get("cluster")
    if not isinstance(cluster, dict) or not cluster.get("nodes"):
        return []
    nodes = cluster["nodes"]
    task = cluster.get("task", {})
    peak = max(int(n.get("peak_concurrent_tasks", n.get("task_slots", 0)) or 0) for n in nodes)
    resources = f"{task.get('num_cpus', '?'):g} CPU(s) as torch threads" if "num_cpus" in task else "its resources"
    if task.get("num_gpus"):
        resources += f" and {task['num_gpus']:g} GPU(s)"
    if peak > 1:
        return [
            f"- **Ray timings**: up to {peak} tasks ran at once on one node, competing for its CPUs/GPU (each task "
            f"asked for {resources}), so `time` and `Speedup` are not comparable with a single-process run; "
            "compare them only within this run."
        ]
    return [
        f"- **Ray timings**: one task at a time per node, each with {resources}; timings compare with a "
        "single-process run that uses the same threads and device."
    ]


def digits_note(dataset: str) -> list[str]:
    """Digits radii are measured on the 16x16 upsampled images, not on the 8x8 scans."""
    if dataset != "digits":
        return []
    from lsrs.data import DIGITS_SIZE, DIGITS_SOURCE_SIZE, DIGITS_UPSAMPLING_NORM

    norm = f"{DIGITS_UPSAMPLING_NORM:g}"
    return [
        f"- **Digits radii**: l2 radii in the {DIGITS_SIZE}×{DIGITS_SIZE} upsampled input; the bilinear "
        f"{DIGITS_SOURCE_SIZE}→{DIGITS_SIZE} upsampling has operator norm {norm}, so a certified radius r covers "
        f"every perturbation of norm below r/{norm} of the original {DIGITS_SOURCE_SIZE}×{DIGITS_SOURCE_SIZE} scans."
    ]


def mnist_note(dataset: str) -> list[str]:
    """MNIST radii: the 28x28 scans are zero-padded to 32x32, an isometry, so radii hold around the scans."""
    if dataset != "mnist":
        return []
    from lsrs.data import MNIST_SIZE, MNIST_SOURCE_SIZE

    src, size = MNIST_SOURCE_SIZE, MNIST_SIZE
    return [
        f"- **Radii on MNIST**: the {src}×{src} scans are zero-padded to {size}×{size}; padding is an isometry (l2 "
        f"distances unchanged), so every radius is an l2 radius around the original {src}×{src} image."
    ]


def dataset_notes(dataset: str) -> list[str]:
    """What the dataset's input pipeline means for the radii (nothing for datasets certified as loaded)."""
    return [*digits_note(dataset), *mnist_note(dataset)]


def imported_note(manifest: dict) -> list[str]:
    """A run imported from a peer's file (``bench import``): its source and what the file does not say."""
    imported = manifest.get("imported")
    if not isinstance(imported, dict):
        return []
    unknown = ", ".join(imported.get("unknown_columns", ())) or "nothing"
    return [
        f"- **Imported**: rows read from {imported.get('source')} (sha256 {imported.get('source_sha256')}, format "
        f"{imported.get('format')}), not certified here; unknown (null in the rows): {unknown}. `time` is the file's "
        "own per-image time, measured on the peer's machine."
    ]


def run_notes(df: pd.DataFrame, manifest: dict, dataset: str) -> list[str]:
    """All notes of one run, in report order."""
    if manifest.get("imported"):
        return [*imported_note(manifest), *dataset_notes(dataset)]
    return [*setup_note(manifest), *ray_note(manifest), *dataset_notes(dataset)]
