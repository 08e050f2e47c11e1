"""Calibration: ECE against hand-computed and synthetic cases, temperature scaling, reliability PNGs."""

import numpy as np
import pytest
import torch
from PIL import Image

from tunelab.evaluation.calibration import (
    T_MIN,
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability_diagram,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Five bins of width 0.2. Top-class confidence and correctness per row, by hand:
# 0.9 right, 0.85 wrong, 1.0 right -> bin (0.8, 1]: conf 0.91667, acc 2/3, gap 0.25
# 0.7 wrong, 0.65 right            -> bin (0.6, 0.8]: conf 0.675, acc 0.5, gap 0.175
# 0.55 right                       -> bin (0.4, 0.6]: conf 0.55, acc 1, gap 0.45
HAND_PROBS = [[0.9, 0.1], [0.3, 0.7], [0.65, 0.35], [0.45, 0.55], [0.15, 0.85], [0.0, 1.0]]
HAND_LABELS = [0, 0, 0, 1, 0, 1]


def calibrated_logits(n: int, seed: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Random logits and labels drawn from their own softmax: calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, classes))
    probs = apply_temperature(logits, 1.0)
    labels = (probs.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return logits, np.minimum(labels, classes - 1)  # guard against a cumsum ending at 0.9999999


def assert_png(path, min_size=(300, 300)):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


def test_hand_computed_ece_and_bins():
    stats = expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=5)
    assert stats["ece"] == pytest.approx((3 * 0.25 + 2 * 0.175 + 0.45) / 6)
    assert stats["mce"] == pytest.approx(0.45)
    bins = stats["bins"]
    assert [b["count"] for b in bins] == [0, 0, 1, 2, 3]
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert bins[4]["confidence"] == pytest.approx(2.75 / 3)
    assert bins[4]["accuracy"] == pytest.approx(2 / 3)
    assert (bins[3]["low"], bins[3]["high"]) == pytest.approx((0.6, 0.8))


def test_numpy_torch_and_lists_agree():
    from_list = expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=5)
    from_torch = expected_calibration_error(torch.tensor(HAND_PROBS), torch.tensor(HAND_LABELS), n_bins=5)
    from_numpy = expected_calibration_error(np.array(HAND_PROBS), np.array(HAND_LABELS), n_bins=5)
    assert from_torch["ece"] == pytest.approx(from_list["ece"], abs=1e-7)  # torch default is float32
    assert from_numpy == from_list


def test_calibrated_set_has_small_ece_and_overconfident_large():
    logits, labels = calibrated_logits(50_000, seed=0)
    calibrated = expected_calibration_error(apply_temperature(logits, 1.0), labels)
    overconfident = expected_calibration_error(apply_temperature(logits * 3, 1.0), labels)
    assert calibrated["ece"] < 0.02
    assert overconfident["ece"] > 0.1
    assert sum(b["count"] for b in calibrated["bins"]) == 50_000
    assert sum(b["count"] for b in overconfident["bins"]) == 50_000


def test_temperature_scaling_recovers_t_and_improves_held_out(tmp_path):
    val_logits, val_labels = calibrated_logits(20_000, seed=1)
    test_logits, test_labels = calibrated_logits(20_000, seed=2)
    assert fit_temperature(torch.tensor(val_logits * 3), torch.tensor(val_labels)) == pytest.approx(
        3, rel=0.1
    )

    report = calibration_report(val_logits * 3, val_labels, test_logits * 3, test_labels, out_dir=tmp_path)
    assert report["temperature"] == pytest.approx(3, rel=0.1)
    before, after = report["before"], report["after"]
    assert after["nll"] < before["nll"]
    assert after["ece"] < before["ece"] / 3
    assert after["accuracy"] == before["accuracy"]
    scaled = apply_temperature(test_logits * 3, report["temperature"])
    np.testing.assert_array_equal(scaled.argmax(axis=1), test_logits.argmax(axis=1))
    for name in ("before", "after"):
        assert report["plots"][name] == str(tmp_path / f"reliability_{name}.png")
        assert_png(tmp_path / f"reliability_{name}.png")


def test_report_without_out_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logits, labels = calibrated_logits(500, seed=3)
    report = calibration_report(logits, labels, logits, labels)
    assert report["plots"] == {} and list(tmp_path.iterdir()) == []


def test_reliability_diagram_writes_png(tmp_path):
    path = reliability_diagram(HAND_PROBS, HAND_LABELS, tmp_path / "sub" / "r.png", n_bins=5, title="hand")
    assert path == tmp_path / "sub" / "r.png"
    assert_png(path)


def test_degenerate_validation_sets_keep_t_in_bounds():
    separable = np.array([[5.0, -5.0], [-5.0, 5.0]] * 10)
    assert fit_temperature(separable, [0, 1] * 10) == pytest.approx(T_MIN, rel=1e-3)
    assert fit_temperature(np.zeros((4, 3)), [0, 1, 2, 0]) == 1.0


def test_bad_shapes_and_labels_are_refused():
    with pytest.raises(ValueError, match="expected"):
        expected_calibration_error([0.2, 0.8], [1])
    with pytest.raises(ValueError, match="labels must lie"):
        expected_calibration_error(HAND_PROBS, [0, 0, 0, 2, 0, 1])
