"""How far a candidate's outputs are from a reference's: numpy only (no torch, no onnxruntime).

One measure, two verdicts:

* :func:`compare_outputs` is the conversion gate: the ONNX form must match its torch source within
  ``atol + rtol * max|reference|`` (class scores of a YOLO head within ``atol``), with the same shapes
  and finite values, or the upload is refused.  Top-1 agreement counts only *decisive* items (whose
  reference top-1 leads the runner-up by more than ``atol``), so ties flipped by rounding do not count.
* :func:`agreement` is the benchmark's report: per sample (a list of output arrays), the max absolute
  difference and whether the first output's argmax matches; shapes that differ or values that are not
  finite are reported in a note, never raised, so one odd engine does not end the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cvops.bench_types import Agreement
from cvops.errors import ValidationFailed
from cvops.events.schema import Parity
from cvops.ml.spec import DETECTION

ATOL = 1e-4
RTOL = 1e-5


def max_abs_diff(reference: np.ndarray, output: np.ndarray) -> float:
    """max |reference - output| in float64 (0.0 for empty arrays; nan/inf pass through)."""
    if not reference.size:
        return 0.0
    return float(np.max(np.abs(reference.astype(np.float64) - output.astype(np.float64))))


def _class_scores(a: np.ndarray, task: str) -> np.ndarray:
    """(items, classes): logits per image, or class scores per anchor for the YOLO head."""
    if task == DETECTION and a.ndim == 3 and a.shape[1] > 4:
        return np.asarray(a[:, 4:, :].transpose(0, 2, 1).reshape(-1, a.shape[1] - 4))
    return np.asarray(a.reshape(a.shape[0], -1))


def _top1_counts(ref: np.ndarray, out: np.ndarray, task: str, margin: float) -> tuple[int, int]:
    """(agreeing, decisive): argmax agreement over the items whose reference top-1 leads by > margin."""
    r, o = _class_scores(ref, task), _class_scores(out, task)
    if r.shape[1] < 2:
        return r.shape[0], r.shape[0]
    top2 = np.sort(r, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > margin
    agree = r.argmax(axis=1) == o.argmax(axis=1)
    return int((agree & decisive).sum()), int(decisive.sum())


def compare_outputs(
    refs: list[np.ndarray],
    outs: list[np.ndarray],
    task: str,
    samples: int,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> tuple[Parity, float]:
    """(Parity, max relative diff) between reference and candidate outputs (one array per batch)."""
    diff = 0.0
    scale = 0.0
    score_diff = 0.0
    agree = 0
    total = 0
    for r, o in zip(refs, outs, strict=True):
        r64 = r.astype(np.float64)
        o64 = o.astype(np.float64)
        if r64.shape != o64.shape:
            raise ValidationFailed(
                "the ONNX output shape differs from the source model's",
                {"torch": list(r.shape), "onnx": list(o.shape)},
            )
        if not np.isfinite(o64).all() or not np.isfinite(r64).all():
            raise ValidationFailed("the model produces NaN or infinite outputs on random input")
        diff = max(diff, max_abs_diff(r64, o64))
        scale = max(scale, float(np.abs(r64).max(initial=0.0)))
        if task == DETECTION and r64.ndim == 3 and r64.shape[1] > 4:
            score_diff = max(score_diff, max_abs_diff(r64[:, 4:, :], o64[:, 4:, :]))
        a, n = _top1_counts(r64, o64, task, atol)
        agree += a
        total += n
    tolerance = atol + rtol * scale
    passed = diff <= tolerance and score_diff <= atol
    parity = Parity(
        max_abs_diff=diff,
        top1_agreement=agree / total if total else 1.0,
        tolerance=tolerance,
        samples=samples,
        passed=passed,
    )
    return parity, diff / scale if scale > 0 else 0.0


def agreement(
    reference: Sequence[Sequence[np.ndarray]], outputs: Sequence[Sequence[np.ndarray]], reference_name: str
) -> Agreement:
    """Agreement of per-sample outputs (each a list of arrays) with the reference's."""
    samples = len(reference)
    if samples == 0 or len(outputs) != samples:
        raise ValidationFailed("compare_outputs needs the same non-zero number of samples")
    max_diff = 0.0
    matches = 0
    for ref, out in zip(reference, outputs, strict=True):
        if len(ref) != len(out) or any(a.shape != b.shape for a, b in zip(ref, out, strict=False)):
            note = (
                f"output shapes differ from the reference: {[list(a.shape) for a in out]} "
                f"vs {[list(a.shape) for a in ref]}"
            )
            return Agreement(
                reference=reference_name, samples=samples, max_abs_diff=None, top1_agreement=0.0, note=note
            )
        for a, b in zip(ref, out, strict=True):
            if a.size:
                diff = max_abs_diff(a, b)
                max_diff = diff if not math.isfinite(diff) else max(max_diff, diff)
                if not math.isfinite(max_diff):
                    break
        if ref and ref[0].size and int(np.argmax(ref[0].reshape(-1))) == int(np.argmax(out[0].reshape(-1))):
            matches += 1
        elif ref and not ref[0].size:
            matches += 1
    if not math.isfinite(max_diff):
        return Agreement(
            reference=reference_name,
            samples=samples,
            max_abs_diff=None,
            top1_agreement=matches / samples,
            note="outputs are not finite",
        )
    return Agreement(
        reference=reference_name, samples=samples, max_abs_diff=max_diff, top1_agreement=matches / samples
    )
