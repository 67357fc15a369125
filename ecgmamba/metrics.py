"""The Challenge 2021 scores, vectorised: same definitions and numbers as the organizers' evaluate_model.py.

labels and binary outputs are (N, C) arrays of 0/1 (or bool), scalar outputs are (N, C) floats. The
organizers' conventions are kept on purpose, because they decide the numbers:
- AUROC is the trapezoidal area under (TPR, TNR) and AUPRC the step area under (TPR, PPV), both taken at
  the distinct output values only, so tied outputs move together.
- A class without positive labels has AUROC = AUPRC = NaN (a class without negatives has AUROC = NaN) and
  macro averages skip NaN (and are NaN when every class is). A class never labelled nor output has
  F-measure NaN.
- A NaN scalar output stops the organizers' threshold sweep before it starts: that class gets AUROC 0
  (NaN if it lacks positives or negatives) and AUPRC NaN. Their loader replaces non-finite outputs by 0
  before this point, so it only matters when calling these functions directly.
- The Challenge metric credits each record by weights[label, output] / max(#(labels ∪ outputs), 1) and is
  normalised so that always answering sinus rhythm scores 0 and answering the labels scores 1 (0 when those
  two score the same). NaN weights count as 0 (np.nansum), which is how the organizers' table loader ends
  up treating every weight that is not a finite number.

The compute_* functions also take `counts`, the records' multiplicities (how the bootstrap scores a
resample without copying it); None means once each.
"""

import numpy as np

METRIC_NAMES = ("AUROC", "AUPRC", "Accuracy", "F-measure", "Challenge metric")


def compute_auc(labels, outputs, counts=None):
    """(macro AUROC, macro AUPRC, AUROC per class, AUPRC per class)."""
    labels = _binary("labels", labels)
    outputs = _scalars(outputs, labels.shape)
    counts = _counts(counts, len(labels))
    order, run_starts, run_class, has_nan = _sort_into_runs(outputs)
    sorted_labels = np.take_along_axis(labels.T, order, axis=1)
    auroc, auprc = _auc_from_runs(sorted_labels, counts[order], run_starts, run_class, has_nan)
    return _nanmean(auroc), _nanmean(auprc), auroc, auprc


def compute_accuracy(labels, outputs, counts=None):
    """Fraction of records whose whole label set is output exactly."""
    labels = _binary("labels", labels)
    outputs = _binary("binary outputs", outputs, labels.shape)
    counts = _counts(counts, len(labels))
    correct = np.all(labels == outputs, axis=1)
    return float(counts @ correct) / float(counts.sum())


def compute_f_measure(labels, outputs, counts=None):
    """(macro F-measure, F-measure per class); F = 2TP / (2TP + FP + FN)."""
    labels = _binary("labels", labels)
    outputs = _binary("binary outputs", outputs, labels.shape)
    counts = _counts(counts, len(labels))
    tp = counts @ (labels & outputs)
    fp = counts @ (~labels & outputs)
    fn = counts @ (labels & ~outputs)
    f_measure = _f_measure(tp, fp, fn)
    return _nanmean(f_measure), f_measure


def compute_modified_confusion_matrix(labels, outputs, counts=None, organizers_order=False):
    """(C, C): A[j, k] sums 1 / max(#(labels ∪ outputs), 1) over records labelled j and output k.

    A matrix product by default. organizers_order=True adds the credits record by record, as the organizers'
    loop does, and so gives the very same floats (about 10x slower); the product differs in the last bits
    only, which matters only for a score that sits exactly on a rounding boundary when printed.
    """
    labels = _binary("labels", labels)
    outputs = _binary("binary outputs", outputs, labels.shape)
    counts = _counts(counts, len(labels))
    num_records, num_classes = labels.shape
    normalization = np.maximum(np.sum(labels | outputs, axis=1), 1)
    credit = counts / normalization
    if not organizers_order:
        return (labels * credit[:, None]).T @ outputs
    matrix = np.zeros(num_classes * num_classes)
    chunk = 4096  # records per step, to bound the (records, C, C) temporary
    for start in range(0, num_records, chunk):
        pairs = labels[start:start + chunk, :, None] & outputs[start:start + chunk, None, :]
        record, cell = np.nonzero(pairs.reshape(len(pairs), -1))
        np.add.at(matrix, cell, credit[start + record])  # unbuffered: adds in record order
    return matrix.reshape(num_classes, num_classes)


def compute_challenge_metric(weights, labels, outputs, sinus_rhythm_index, counts=None, organizers_order=False):
    """Weighted credit for the outputs, scaled so always-sinus-rhythm scores 0 and perfect outputs score 1.

    organizers_order: see compute_modified_confusion_matrix (True for scores that get printed).
    """
    labels = _binary("labels", labels)
    outputs = _binary("binary outputs", outputs, labels.shape)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (labels.shape[1], labels.shape[1]):
        raise ValueError(f"weights have shape {weights.shape}, expected {(labels.shape[1],) * 2}")
    if not 0 <= sinus_rhythm_index < labels.shape[1]:
        raise ValueError(f"sinus_rhythm_index {sinus_rhythm_index} is not a class index")
    sinus_rhythm_outputs = np.zeros_like(labels)
    sinus_rhythm_outputs[:, sinus_rhythm_index] = True

    def score(outputs):
        return np.nansum(weights * compute_modified_confusion_matrix(labels, outputs, counts, organizers_order))

    return _normalised_score(score(outputs), score(labels), score(sinus_rhythm_outputs))


def compute_scores(labels, binary_outputs, scalar_outputs, weights, sinus_rhythm_index, counts=None,
                   organizers_order=False):
    """The five Challenge scores as a dict keyed by METRIC_NAMES."""
    auroc, auprc, _, _ = compute_auc(labels, scalar_outputs, counts)
    f_measure, _ = compute_f_measure(labels, binary_outputs, counts)
    return {
        "AUROC": auroc,
        "AUPRC": auprc,
        "Accuracy": compute_accuracy(labels, binary_outputs, counts),
        "F-measure": f_measure,
        "Challenge metric": compute_challenge_metric(weights, labels, binary_outputs, sinus_rhythm_index, counts,
                                                     organizers_order),
    }


def bootstrap_ci(labels, binary_outputs, scalar_outputs, weights, sinus_rhythm_index, n=1000, seed=0):
    """95 % percentile intervals {metric: (low, high)} from n resamples of the records with replacement.

    A resample is scored through record multiplicities rather than by copying arrays; ties and duplicates
    then behave exactly as in a materialised resample. Resamples where a macro score is undefined (NaN)
    are left out of that score's interval.
    """
    labels = _binary("labels", labels)
    binary_outputs = _binary("binary outputs", binary_outputs, labels.shape)
    scalar_outputs = _scalars(scalar_outputs, labels.shape)
    if n < 1:
        raise ValueError(f"bootstrap needs at least one resample, got n={n}")
    weights = np.asarray(weights, dtype=np.float64)
    if np.isinf(weights).any():
        raise ValueError("bootstrap_ci needs finite weights (NaN weights count as 0, like np.nansum)")
    compute_challenge_metric(weights, labels, binary_outputs, sinus_rhythm_index)  # checks shapes and index
    num_records = len(labels)
    rng = np.random.default_rng(seed)

    # What a resample does not change is computed once: the sort into thresholds, whether each record is
    # exactly right, its TP/FP/FN per class, and its Challenge-metric credit for the observed, perfect and
    # always-sinus-rhythm outputs (the metric is a sum of per-record credits).
    order, run_starts, run_class, has_nan = _sort_into_runs(scalar_outputs)
    sorted_labels = np.take_along_axis(labels.T, order, axis=1)
    exactly_right = np.all(labels == binary_outputs, axis=1)
    outcome = np.stack([labels & binary_outputs, ~labels & binary_outputs, labels & ~binary_outputs], axis=1)
    outcome = outcome.reshape(num_records, -1).astype(np.float64)
    sinus_rhythm_outputs = np.zeros_like(labels)
    sinus_rhythm_outputs[:, sinus_rhythm_index] = True
    finite_weights = np.where(np.isnan(weights), 0.0, weights)
    credits = np.stack([_record_credits(finite_weights, labels, outputs)
                        for outputs in (binary_outputs, labels, sinus_rhythm_outputs)], axis=1)

    samples = {name: np.empty(n) for name in METRIC_NAMES}
    for b in range(n):
        counts = np.bincount(rng.integers(0, num_records, num_records), minlength=num_records).astype(np.float64)
        auroc, auprc = _auc_from_runs(sorted_labels, counts[order], run_starts, run_class, has_nan)
        samples["AUROC"][b] = _nanmean(auroc)
        samples["AUPRC"][b] = _nanmean(auprc)
        samples["Accuracy"][b] = float(counts @ exactly_right) / num_records
        tp, fp, fn = (counts @ outcome).reshape(3, -1)
        samples["F-measure"][b] = _nanmean(_f_measure(tp, fp, fn))
        observed_score, correct_score, inactive_score = counts @ credits
        samples["Challenge metric"][b] = _normalised_score(observed_score, correct_score, inactive_score)

    intervals = {}
    for name, values in samples.items():
        values = values[np.isfinite(values)]
        if len(values) == 0:
            intervals[name] = (float("nan"), float("nan"))
        else:
            low, high = np.percentile(values, [2.5, 97.5])
            intervals[name] = (float(low), float(high))
    return intervals


def class_curve(labels, outputs):
    """One class's curve at the organizers' thresholds: (TPR, TNR, PPV), starting above the largest output.

    Areas: AUROC = sum 0.5 * diff(TPR) * (TNR[1:] + TNR[:-1]), AUPRC = sum diff(TPR) * PPV[1:].
    """
    labels = _binary("labels", np.asarray(labels).reshape(-1, 1))[:, 0]
    outputs = _scalars(np.asarray(outputs).reshape(-1, 1), (len(labels), 1))[:, 0]
    order = np.argsort(outputs)[::-1]
    sorted_outputs, sorted_labels = outputs[order], labels[order]
    last_of_tie = np.append(sorted_outputs[1:] != sorted_outputs[:-1], True)
    tp = np.concatenate([[0.0], np.cumsum(sorted_labels)[last_of_tie]])
    fp = np.concatenate([[0.0], np.cumsum(~sorted_labels)[last_of_tie]])
    positives, negatives = tp[-1], fp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / positives if positives else np.full_like(tp, np.nan)
        tnr = (negatives - fp) / negatives if negatives else np.full_like(fp, np.nan)
        ppv = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
    return tpr, tnr, ppv


def _sort_into_runs(outputs):
    """Sort each class's outputs in descending order; runs of tied outputs are the organizers' thresholds.

    Works on the (C, N) transpose, flattened, so a run never crosses classes. Returns the sorting order
    (C, N), the flat start of every run, the class of every run, and which classes contain NaN.
    """
    by_class = np.ascontiguousarray(outputs.T)
    order = np.argsort(by_class, axis=1)[:, ::-1]
    sorted_outputs = np.take_along_axis(by_class, order, axis=1)
    new_run = np.ones(sorted_outputs.shape, dtype=bool)
    new_run[:, 1:] = sorted_outputs[:, 1:] != sorted_outputs[:, :-1]
    run_starts = np.flatnonzero(new_run)
    run_class = run_starts // outputs.shape[0]
    has_nan = np.isnan(by_class).any(axis=1)
    return order, run_starts, run_class, has_nan


def _auc_from_runs(sorted_labels, sorted_counts, run_starts, run_class, has_nan):
    """Per-class AUROC and AUPRC; sorted_* are (C, N) in the order of _sort_into_runs.

    Each run of ties moves the curve from one threshold's (TP, FP) to the next. The terms are formed with
    the organizers' operations and summed in their order (bincount adds sequentially), so the results are
    the same floating-point numbers, not just close ones: scores.csv then rounds the same way.
    """
    num_classes = len(has_nan)
    positive_counts = sorted_counts * sorted_labels
    run_tp = np.add.reduceat(positive_counts.ravel(), run_starts)
    run_fp = np.add.reduceat((sorted_counts - positive_counts).ravel(), run_starts)
    positives = np.bincount(run_class, weights=run_tp, minlength=num_classes)
    negatives = np.bincount(run_class, weights=run_fp, minlength=num_classes)

    # TP and FP after each run: running sums that restart at every class's first run (whole numbers: exact).
    first_run = np.searchsorted(run_class, np.arange(num_classes))
    restarted_tp, restarted_fp = run_tp.copy(), run_fp.copy()
    restarted_tp[first_run[1:]] -= positives[:-1]
    restarted_fp[first_run[1:]] -= negatives[:-1]
    tp, fp = np.cumsum(restarted_tp), np.cumsum(restarted_fp)

    with np.errstate(invalid="ignore", divide="ignore"):
        p, n = positives[run_class], negatives[run_class]
        tpr, tpr_before = tp / p, (tp - run_tp) / p
        tnr, tnr_before = (n - fp) / n, (n - (fp - run_fp)) / n
        ppv = tp / (tp + fp)
        auroc_terms = 0.5 * (tpr - tpr_before) * (tnr + tnr_before)
        auprc_terms = (tpr - tpr_before) * ppv
    # Runs of records that a bootstrap resample left out (count 0) are not thresholds at all.
    present = (run_tp + run_fp) > 0
    auroc = np.bincount(run_class, weights=np.where(present, auroc_terms, 0.0), minlength=num_classes)
    auprc = np.bincount(run_class, weights=np.where(present, auprc_terms, 0.0), minlength=num_classes)

    # The organizers' sweep never passes a NaN output (it sorts first and compares False): nothing is counted.
    auroc[has_nan] = np.where((positives[has_nan] > 0) & (negatives[has_nan] > 0), 0.0, np.nan)
    auprc[has_nan] = np.nan
    return auroc, auprc


def _f_measure(tp, fp, fn):
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


def _normalised_score(observed_score, correct_score, inactive_score):
    """0 for always-sinus-rhythm, 1 for the labels themselves; 0 when those two coincide."""
    if correct_score == inactive_score:
        return 0.0
    return float(observed_score - inactive_score) / float(correct_score - inactive_score)


def _record_credits(weights, labels, outputs):
    """Each record's share of sum(weights * modified confusion matrix) (weights must be finite here)."""
    normalization = np.maximum(np.sum(labels | outputs, axis=1), 1)
    return np.sum((labels @ weights) * outputs, axis=1) / normalization


def _nanmean(values):
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _binary(name, array, shape=None):
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (records, classes) array, got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} have shape {array.shape}, expected {shape} like the labels")
    if array.shape[0] == 0:
        raise ValueError(f"{name} have no records")
    if array.dtype != bool:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must be 0/1 or boolean")
        array = array.astype(bool)
    return array


def _scalars(array, shape):
    array = np.asarray(array, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"scalar outputs have shape {array.shape}, expected {shape} like the labels")
    return array


def _counts(counts, num_records):
    if counts is None:
        return np.ones(num_records)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (num_records,):
        raise ValueError(f"counts have shape {counts.shape}, expected ({num_records},)")
    return counts
