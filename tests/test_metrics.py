"""The Challenge scores: hand-computed cases, and properties against independent implementations."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, roc_auc_score

from ecgmamba import metrics
from ecgmamba.scoring import load_scoring


# ---------------------------------------------------------------------------------------------------------------
# Slow, readable versions of the definitions, written from the Challenge's description.

def loop_auc(labels, outputs):
    """Per-class (AUROC, AUPRC): sweep the distinct outputs from high to low, starting above the highest."""
    auroc, auprc = [], []
    for k in range(labels.shape[1]):
        y, s = labels[:, k], outputs[:, k]
        positives, negatives = y.sum(), (~y).sum()
        points = [(0.0, float(negatives), float("nan"))]  # (tp, tn, ppv) above every output
        for threshold in sorted(set(s.tolist()), reverse=True):
            chosen = s >= threshold
            tp, fp = (chosen & y).sum(), (chosen & ~y).sum()
            points.append((float(tp), float(negatives - fp), tp / (tp + fp)))
        roc, pr = 0.0, 0.0
        for (tp0, tn0, _), (tp1, tn1, ppv1) in zip(points[:-1], points[1:]):
            tpr0, tpr1 = (tp0 / positives, tp1 / positives) if positives else (np.nan, np.nan)
            tnr0, tnr1 = (tn0 / negatives, tn1 / negatives) if negatives else (np.nan, np.nan)
            roc += 0.5 * (tpr1 - tpr0) * (tnr1 + tnr0)
            pr += (tpr1 - tpr0) * ppv1
        auroc.append(roc)
        auprc.append(pr)
    return np.array(auroc), np.array(auprc)


def loop_modified_confusion_matrix(labels, outputs):
    num_classes = labels.shape[1]
    matrix = np.zeros((num_classes, num_classes))
    for y, o in zip(labels, outputs):
        normalization = float(max(np.sum(y | o), 1))
        for j in np.flatnonzero(y):
            for k in np.flatnonzero(o):
                matrix[j, k] += 1.0 / normalization
    return matrix


def loop_challenge_metric(weights, labels, outputs, sinus_rhythm_index):
    def score(o):
        return np.nansum(weights * loop_modified_confusion_matrix(labels, o))

    always_sinus = np.zeros_like(labels)
    always_sinus[:, sinus_rhythm_index] = True
    observed, correct, inactive = score(outputs), score(labels), score(always_sinus)
    return 0.0 if correct == inactive else (observed - inactive) / (correct - inactive)


def loop_f_measure(labels, outputs):
    result = []
    for k in range(labels.shape[1]):
        tp = np.sum(labels[:, k] & outputs[:, k])
        fp = np.sum(~labels[:, k] & outputs[:, k])
        fn = np.sum(labels[:, k] & ~outputs[:, k])
        result.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else np.nan)
    return np.array(result)


def same(a, b, tolerance=1e-12):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.all((np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= tolerance)))


@st.composite
def scored_data(draw, max_records=40, max_classes=5):
    """labels, binary and scalar outputs; scalar outputs from few distinct values so ties are common."""
    num_records = draw(st.integers(1, max_records))
    num_classes = draw(st.integers(1, max_classes))
    shape = (num_records, num_classes)
    labels = draw(arrays(bool, shape))
    binary = draw(arrays(bool, shape))
    levels = draw(st.sampled_from([2, 5, 1000]))
    scalar = draw(arrays(np.int64, shape, elements=st.integers(0, levels))) / levels
    return labels, binary, scalar


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed cases

def test_auc_with_ties_by_hand():
    labels = np.array([[1], [0], [1], [0]], dtype=bool)
    outputs = np.array([[0.9], [0.9], [0.5], [0.1]])
    # Points (TPR, TNR): (0, 1), (.5, .5) at 0.9, (1, .5) at 0.5, (1, 0) at 0.1; PPV 1/2, 2/3, 1/2.
    macro_auroc, macro_auprc, auroc, auprc = metrics.compute_auc(labels, outputs)
    assert auroc[0] == pytest.approx(0.5 * 0.5 * 1.5 + 0.5 * 0.5 * 1.0)
    assert auprc[0] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert (macro_auroc, macro_auprc) == (auroc[0], auprc[0])


def test_auc_signed_zeros_tie_and_infinities_are_ordinary_thresholds():
    # -0 and 0 are one threshold; inf (a mean of huge outputs can overflow) is simply the highest one.
    labels = np.array([[1], [0], [1], [0], [0]], dtype=bool)
    outputs = np.array([[0.0], [-0.0], [np.inf], [-np.inf], [0.5]])
    # Sweep inf (TP), .5 (FP), 0 and -0 (TP + FP), -inf (FP): points (TPR, TNR) (0, 1), (.5, 1), (.5, 2/3),
    # (1, 1/3), (1, 0); PPV 1, 1/2, 2/4, 2/5.
    _, _, auroc, auprc = metrics.compute_auc(labels, outputs)
    assert auroc[0] == pytest.approx(0.5 * 0.5 * 2 + 0.5 * 0.5 * (2 / 3 + 1 / 3), abs=1e-15)
    assert auprc[0] == pytest.approx(0.5 * 1 + 0.5 * 0.5, abs=1e-15)
    assert np.array_equal(loop_auc(labels, outputs), (auroc, auprc))


def test_auc_nan_semantics():
    labels = np.array([[0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 1, 0]], dtype=bool)
    outputs = np.array([[0.2, 0.1, 0.7], [0.4, 0.3, 0.7], [0.6, 0.5, 0.7], [0.8, 0.7, 0.7]])
    macro_auroc, macro_auprc, auroc, auprc = metrics.compute_auc(labels, outputs)
    assert np.isnan(auroc[0]) and np.isnan(auprc[0])  # no positives
    assert np.isnan(auroc[1]) and auprc[1] == 1.0  # no negatives
    assert auroc[2] == 0.5 and auprc[2] == 0.5  # constant output: one threshold, prevalence
    assert macro_auroc == 0.5 and macro_auprc == 0.75  # NaN classes are left out
    nothing = metrics.compute_auc(np.zeros((3, 2), bool), np.zeros((3, 2)))
    assert np.isnan(nothing[0]) and np.isnan(nothing[1])


def test_nan_output_follows_the_organizers_sweep():
    # Their sweep sorts NaN first and never passes it: nothing is counted, AUROC 0 and AUPRC NaN.
    labels = np.array([[1, 1], [0, 1], [1, 1]], dtype=bool)
    outputs = np.array([[0.9, 0.9], [np.nan, np.nan], [0.1, 0.1]])
    _, _, auroc, auprc = metrics.compute_auc(labels, outputs)
    assert auroc[0] == 0.0 and np.isnan(auroc[1])
    assert np.isnan(auprc).all()


def test_accuracy_and_f_measure_by_hand():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=bool)
    outputs = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=bool)
    assert metrics.compute_accuracy(labels, outputs) == pytest.approx(2 / 3)
    macro, per_class = metrics.compute_f_measure(labels, outputs)
    assert per_class[0] == 1.0
    assert per_class[1] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))
    assert np.isnan(per_class[2])  # never labelled, never output
    assert macro == pytest.approx((1.0 + 2 / 3) / 2)
    assert np.isnan(metrics.compute_f_measure(np.zeros((2, 2), bool), np.zeros((2, 2), bool))[0])


def test_modified_confusion_matrix_by_hand():
    labels = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=bool)
    outputs = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=bool)
    # Record 0: labels {0, 1}, outputs {0, 2}: union of 3, each (label, output) pair gets 1/3.
    # Record 1: no labels: no credit. Record 2: label 2, nothing output: no credit.
    expected = np.zeros((3, 3))
    expected[0, 0] = expected[0, 2] = expected[1, 0] = expected[1, 2] = 1 / 3
    for organizers_order in (False, True):
        matrix = metrics.compute_modified_confusion_matrix(labels, outputs, organizers_order=organizers_order)
        assert np.allclose(matrix, expected)


def test_challenge_metric_by_hand():
    weights = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.25], [0.0, 0.25, 1.0]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=bool)
    sinus = 1
    assert metrics.compute_challenge_metric(weights, labels, labels, sinus) == 1.0
    always_sinus = np.zeros_like(labels)
    always_sinus[:, sinus] = True
    assert metrics.compute_challenge_metric(weights, labels, always_sinus, sinus) == 0.0
    # Each record's credit is divided by the size of labels ∪ outputs.
    # Perfect: 1 + 1 + 1 + (1 + .25 + .25 + 1) / 2 = 4.25.
    # Always sinus: .5 / 2 + 1 + .25 / 2 + (1 + .25) / 2 = 2.0.
    # These outputs: record 0 says class 1 (.5 / 2), record 1 nothing (0), record 2 right (1),
    # record 3 says class 2 only ((.25 + 1) / 2). Observed 1.875.
    outputs = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=bool)
    expected = (1.875 - 2.0) / (4.25 - 2.0)
    assert metrics.compute_challenge_metric(weights, labels, outputs, sinus) == pytest.approx(expected)
    # When perfect and always-sinus score the same, the metric is 0 by definition.
    only_sinus = np.zeros_like(labels)
    only_sinus[:, sinus] = True
    assert metrics.compute_challenge_metric(weights, only_sinus, outputs, sinus) == 0.0


def test_nan_weights_are_ignored():
    weights = np.array([[1.0, 0.5, np.nan], [0.5, 1.0, 0.5], [np.nan, 0.5, 1.0]])
    labels = np.array([[1, 0, 0], [0, 1, 0]], dtype=bool)
    outputs = np.array([[1, 0, 1], [0, 1, 0]], dtype=bool)
    # Observed (1 + nan) / 2 + 1 -> 1.5, perfect 2, always sinus .5 / 2 + 1 = 1.25.
    for organizers_order in (False, True):
        score = metrics.compute_challenge_metric(weights, labels, outputs, 1, organizers_order=organizers_order)
        assert score == pytest.approx((1.5 - 1.25) / (2 - 1.25))


def test_compute_scores_keys():
    table = load_scoring("2021")
    rng = np.random.default_rng(0)
    labels = rng.random((30, 26)) < 0.2
    scalar = rng.random((30, 26))
    scores = metrics.compute_scores(labels, scalar > 0.5, scalar, table.weights, table.sinus_rhythm_index)
    assert tuple(scores) == metrics.METRIC_NAMES
    assert scores["AUROC"] == metrics.compute_auc(labels, scalar)[0]


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.compute_accuracy(np.array([[0, 2]]), np.array([[0, 1]])), "0/1"),
    (lambda: metrics.compute_f_measure(np.zeros((2, 3)), np.zeros((2, 2))), "shape"),
    (lambda: metrics.compute_auc(np.zeros(3), np.zeros(3)), "2-D"),
    (lambda: metrics.compute_auc(np.zeros((0, 3)), np.zeros((0, 3))), "no records"),
    (lambda: metrics.compute_challenge_metric(np.eye(3), np.zeros((2, 2)), np.zeros((2, 2)), 0), "weights"),
    (lambda: metrics.compute_challenge_metric(np.eye(2), np.zeros((2, 2)), np.zeros((2, 2)), 5), "sinus"),
    (lambda: metrics.compute_accuracy(np.zeros((2, 2)), np.zeros((2, 2)), counts=[1, 1, 1]), "counts"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------------------
# Properties

@settings(max_examples=150, deadline=None)
@given(scored_data())
def test_auc_matches_loop_and_sklearn(data):
    labels, _, scalar = data
    macro_auroc, macro_auprc, auroc, auprc = metrics.compute_auc(labels, scalar)
    loop_auroc, loop_auprc = loop_auc(labels, scalar)
    assert same(auroc, loop_auroc) and same(auprc, loop_auprc)
    for k in range(labels.shape[1]):
        if labels[:, k].any() and not labels[:, k].all():
            assert auroc[k] == pytest.approx(roc_auc_score(labels[:, k], scalar[:, k]), abs=1e-12)
        if labels[:, k].any():
            assert auprc[k] == pytest.approx(average_precision_score(labels[:, k], scalar[:, k]), abs=1e-12)
    finite = np.isfinite(auroc)
    assert np.isnan(macro_auroc) if not finite.any() else macro_auroc == pytest.approx(auroc[finite].mean())


@settings(max_examples=150, deadline=None)
@given(scored_data(), st.data())
def test_auc_is_the_very_floats_of_the_threshold_walk(data, draw):
    """Not close but equal, with outputs from a pool of ties, signed zeros and infinities: scores.csv rounds alike."""
    labels, _, _ = data
    pool = [0.0, -0.0, 0.1, 0.3, 1 / 3, 0.7, 1e308, np.inf, -np.inf, -1e-300]
    scalar = np.array(draw.draw(arrays(np.int64, labels.shape, elements=st.integers(0, len(pool) - 1))))
    scalar = np.array(pool)[scalar]
    macro_auroc, macro_auprc, auroc, auprc = metrics.compute_auc(labels, scalar)
    loop_auroc, loop_auprc = loop_auc(labels, scalar)
    assert np.array_equal(auroc, loop_auroc, equal_nan=True) and np.array_equal(auprc, loop_auprc, equal_nan=True)
    for macro, per_class in ((macro_auroc, auroc), (macro_auprc, auprc)):
        assert same(macro, np.nanmean(per_class) if np.isfinite(per_class).any() else np.nan, 0)


@settings(max_examples=100, deadline=None)
@given(scored_data())
def test_class_curve_areas_are_the_reported_ones(data):
    labels, _, scalar = data
    _, _, auroc, auprc = metrics.compute_auc(labels, scalar)
    for k in range(labels.shape[1]):
        tpr, tnr, ppv = metrics.class_curve(labels[:, k], scalar[:, k])
        assert len(tpr) == len(np.unique(scalar[:, k])) + 1
        assert same(np.sum(0.5 * np.diff(tpr) * (tnr[1:] + tnr[:-1])), auroc[k])
        assert same(np.sum(np.diff(tpr) * ppv[1:]), auprc[k])


@settings(max_examples=150, deadline=None)
@given(scored_data(max_classes=6), st.integers(0, 5))
def test_counts_metrics_match_loops(data, sinus_seed):
    labels, binary, _ = data
    num_classes = labels.shape[1]
    rng = np.random.default_rng(sinus_seed)
    weights = rng.random((num_classes, num_classes))
    weights = (weights + weights.T) / 2
    np.fill_diagonal(weights, 1.0)
    sinus = sinus_seed % num_classes
    expected = loop_challenge_metric(weights, labels, binary, sinus)
    assert metrics.compute_challenge_metric(weights, labels, binary, sinus) == pytest.approx(expected, abs=1e-12)
    # Summed in the organizers' order the floats are identical, not merely close.
    assert metrics.compute_challenge_metric(weights, labels, binary, sinus, organizers_order=True) == expected
    assert np.array_equal(metrics.compute_modified_confusion_matrix(labels, binary, organizers_order=True),
                          loop_modified_confusion_matrix(labels, binary))
    assert same(metrics.compute_f_measure(labels, binary)[1], loop_f_measure(labels, binary))
    assert metrics.compute_accuracy(labels, binary) == np.mean([np.array_equal(y, o) for y, o in zip(labels, binary)])


@settings(max_examples=100, deadline=None)
@given(scored_data(), st.integers(0, 2**32 - 1))
def test_counts_equal_a_materialised_resample(data, seed):
    labels, binary, scalar = data
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(labels), len(labels))
    counts = np.bincount(index, minlength=len(labels))
    weights = np.ones((labels.shape[1], labels.shape[1]))
    np.fill_diagonal(weights, 2.0)
    for a, b in zip(metrics.compute_auc(labels, scalar, counts=counts),
                    metrics.compute_auc(labels[index], scalar[index])):
        assert same(a, b, 1e-9)
    for a, b in zip(metrics.compute_f_measure(labels, binary, counts=counts),
                    metrics.compute_f_measure(labels[index], binary[index])):
        assert same(a, b)
    assert same(metrics.compute_accuracy(labels, binary, counts=counts),
                metrics.compute_accuracy(labels[index], binary[index]))
    assert same(metrics.compute_modified_confusion_matrix(labels, binary, counts=counts),
                metrics.compute_modified_confusion_matrix(labels[index], binary[index]), 1e-9)
    assert same(metrics.compute_challenge_metric(weights, labels, binary, 0, counts=counts),
                metrics.compute_challenge_metric(weights, labels[index], binary[index], 0), 1e-9)


def test_full_size_organizers_order_is_exact_and_product_is_close():
    table = load_scoring("2021")
    rng = np.random.default_rng(1)
    labels = rng.random((3000, 26)) < 0.08
    binary = rng.random((3000, 26)) < 0.1
    fast = metrics.compute_modified_confusion_matrix(labels, binary)
    exact = metrics.compute_modified_confusion_matrix(labels, binary, organizers_order=True)
    assert np.array_equal(exact, loop_modified_confusion_matrix(labels, binary))
    assert np.allclose(fast, exact, rtol=1e-12, atol=1e-12)
    assert metrics.compute_challenge_metric(table.weights, labels, binary, table.sinus_rhythm_index) == \
        pytest.approx(loop_challenge_metric(table.weights, labels, binary, table.sinus_rhythm_index), abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap

def naive_bootstrap(labels, binary, scalar, weights, sinus, n, seed):
    """Copy the resampled records and score them: what bootstrap_ci must reproduce."""
    rng = np.random.default_rng(seed)
    values = {name: [] for name in metrics.METRIC_NAMES}
    for _ in range(n):
        index = rng.integers(0, len(labels), len(labels))
        scores = metrics.compute_scores(labels[index], binary[index], scalar[index], weights, sinus)
        for name in values:
            values[name].append(scores[name])
    return {name: tuple(np.nanpercentile(v, [2.5, 97.5])) for name, v in values.items()}


def test_bootstrap_equals_naive_resampling():
    table = load_scoring("2021")
    rng = np.random.default_rng(3)
    labels = rng.random((80, 26)) < 0.15
    scalar = np.round(rng.random((80, 26)), 1)
    binary = scalar > 0.6
    intervals = metrics.bootstrap_ci(labels, binary, scalar, table.weights, table.sinus_rhythm_index, n=40, seed=7)
    expected = naive_bootstrap(labels, binary, scalar, table.weights, table.sinus_rhythm_index, 40, 7)
    assert tuple(intervals) == metrics.METRIC_NAMES
    for name in metrics.METRIC_NAMES:
        assert intervals[name] == pytest.approx(expected[name], abs=1e-9)
    scores = metrics.compute_scores(labels, binary, scalar, table.weights, table.sinus_rhythm_index)
    for name in ("AUROC", "F-measure", "Challenge metric"):
        low, high = intervals[name]
        assert low < scores[name] < high
    again = metrics.bootstrap_ci(labels, binary, scalar, table.weights, table.sinus_rhythm_index, n=40, seed=7)
    assert again == intervals


def test_bootstrap_of_perfect_outputs():
    table = load_scoring("2021")
    rng = np.random.default_rng(4)
    labels = rng.random((50, 26)) < 0.1
    intervals = metrics.bootstrap_ci(labels, labels, labels.astype(float), table.weights,
                                     table.sinus_rhythm_index, n=20)
    for name in metrics.METRIC_NAMES:
        assert intervals[name] == (1.0, 1.0)
    with pytest.raises(ValueError, match="resample"):
        metrics.bootstrap_ci(labels, labels, labels.astype(float), table.weights, table.sinus_rhythm_index, n=0)
