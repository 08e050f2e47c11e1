"""Calibration of classifiers: expected calibration error, reliability diagrams and temperature scaling.

Follows Guo et al. 2017, "On Calibration of Modern Neural Networks": confidence is the top class
probability, bins are equal-width on [0, 1], and temperature scaling fits one T > 0 on validation logits.
Inputs may be numpy arrays, torch tensors or nested lists; everything returned is plain Python or numpy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Bounds for the temperature search: a fit that lands on one means the validation set is degenerate
# (for example every example already right with margin, which pushes T towards 0).
T_MIN, T_MAX = 1e-2, 1e2


def _as_numpy(x, dtype) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor; checked by attribute so torch is not imported for numpy input
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float64 scores and (N,) int64 labels, with shapes and label range checked."""
    scores, labels = _as_numpy(scores, np.float64), _as_numpy(labels, np.int64)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],) or scores.shape[0] == 0:
        raise ValueError(
            f"expected (N, C) scores and (N,) labels with N > 0, got {scores.shape}, {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got [{labels.min()}, {labels.max()}]")
    return scores, labels


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)  # stable for large logits
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-_log_softmax(logits)[np.arange(len(labels)), labels].mean())


def expected_calibration_error(probs, labels, n_bins: int = 10) -> dict:
    """ECE, MCE and per-bin statistics of (N, C) class probabilities against (N,) integer labels.

    Bin b holds confidences in (low, high]; the first bin also holds 0. Empty bins are listed with
    count 0 and confidence/accuracy None, so the list always has n_bins entries.
    """
    probs, labels = _check(probs, labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Assign by the same edges we report, so a confidence printed as a bin edge lands where the table says.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    ece, mce, bins = 0.0, 0.0, []
    for b in range(n_bins):
        in_bin = which == b
        count = int(in_bin.sum())
        conf = float(confidence[in_bin].mean()) if count else None
        acc = float(correct[in_bin].mean()) if count else None
        if count:
            gap = abs(acc - conf)
            ece += count / len(labels) * gap
            mce = max(mce, gap)
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": conf,
                "accuracy": acc,
            }
        )
    return {"ece": ece, "mce": mce, "bins": bins}


def reliability_diagram(probs, labels, path, n_bins: int = 10, title: str | None = None) -> Path:
    """Write a PNG reliability diagram (accuracy per confidence bin, gap to the diagonal, counts below)."""
    # A bare Figure renders with Agg and never touches pyplot's global backend or opens a window.
    from matplotlib.figure import Figure

    stats = expected_calibration_error(probs, labels, n_bins)
    full = [b for b in stats["bins"] if b["count"]]
    centres = [(b["low"] + b["high"]) / 2 for b in full]
    width = 1.0 / n_bins
    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})

    accs = [b["accuracy"] for b in full]
    gaps = [b["confidence"] - b["accuracy"] for b in full]  # > 0: over-confident, bar rises above accuracy
    top.bar(centres, accs, width=width, color="#4878cf", edgecolor="black", label="accuracy")
    top.bar(
        centres,
        gaps,
        bottom=accs,
        width=width,
        color="#d65f5f",
        alpha=0.5,
        edgecolor="#d65f5f",
        hatch="//",
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.set_title(f"{title or 'Reliability diagram'}\nECE = {stats['ece']:.3f}   MCE = {stats['mce']:.3f}")
    top.legend(loc="upper left", fontsize="small")

    bottom.bar(centres, [b["count"] for b in full], width=width, color="gray", edgecolor="black")
    bottom.set(xlabel="confidence (top class probability)", ylabel="count")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """(N, C) probabilities softmax(logits / T)."""
    logits = _as_numpy(logits, np.float64)
    return np.exp(_log_softmax(logits / temperature))


def fit_temperature(logits, labels) -> float:
    """The T in [T_MIN, T_MAX] minimising the NLL of softmax(logits / T) on (validation) logits and labels.

    NLL is convex in 1/T, hence unimodal in log T, so a golden-section search on log T finds the
    minimum without gradients, learning rates or starting points: deterministic, and always inside bounds.
    """
    logits, labels = _check(logits, labels)
    if np.ptp(logits, axis=1).max() == 0:
        return 1.0  # every row constant: the NLL does not depend on T
    ratio = (math.sqrt(5) - 1) / 2
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = _nll(logits / math.exp(c), labels), _nll(logits / math.exp(d), labels)
    while hi - lo > 1e-7:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - ratio * (hi - lo)
            fc = _nll(logits / math.exp(c), labels)
        else:
            lo, c, fc = c, d, fd
            d = lo + ratio * (hi - lo)
            fd = _nll(logits / math.exp(d), labels)
    return math.exp((lo + hi) / 2)


def _summary(logits: np.ndarray, labels: np.ndarray, n_bins: int) -> dict:
    stats = expected_calibration_error(np.exp(_log_softmax(logits)), labels, n_bins)
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    return {"ece": stats["ece"], "mce": stats["mce"], "nll": _nll(logits, labels), "accuracy": accuracy}


def calibration_report(
    val_logits, val_labels, test_logits, test_labels, out_dir=None, n_bins: int = 10
) -> dict:
    """Fit T on validation logits; ECE, MCE, NLL and accuracy on test before and after scaling.

    With out_dir, also writes reliability_before.png and reliability_after.png there; their paths (as
    strings, so the report stays JSON-serialisable) are under "plots".
    """
    temperature = fit_temperature(val_logits, val_labels)
    test_logits, test_labels = _check(test_logits, test_labels)
    report, plots = {"temperature": temperature}, {}
    for name, t in (("before", 1.0), ("after", temperature)):
        report[name] = _summary(test_logits / t, test_labels, n_bins)
        if out_dir is not None:
            path = reliability_diagram(
                apply_temperature(test_logits, t),
                test_labels,
                Path(out_dir) / f"reliability_{name}.png",
                n_bins,
                title=f"{name.capitalize()} temperature scaling (T = {t:.2f})",
            )
            plots[name] = str(path)
    return {**report, "plots": plots}
