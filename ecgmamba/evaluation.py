"""Scoring a folder of model outputs against a folder of labelled headers, the way the organizers did.

Loading follows the organizers' evaluate_model.py and helper_code.load_outputs:
- every `.hea` file of the label folder (sorted by name, hidden files skipped) needs `<record>.csv` in the
  output folder; the labels are the `#Dx` codes of the header, unscored codes ignored;
- an output file is four lines: `#record id`, classes, binary outputs, scalar outputs. Classes may come in
  any order, may join equivalent codes with '|' and may include unscored extra classes (ignored); a scored
  class missing from the file counts as 0;
- a binary output is positive only if it reads 1, True, true, T or t (so "1.0" is negative); a scalar
  output that is not a finite number counts as 0;
- when several output columns match one scored class (equivalent codes), the binary output is positive if
  any is, and the scalar output is their mean.

Two deliberate differences: a missing output file is reported together with every other missing one, and
a malformed output file (too few lines, rows of different lengths) raises an error naming the file
instead of failing deep inside the loop.

Record ids tell the source database (see SOURCES). Chapman-Shaoxing and Ningbo records both start with
"JS", so the breakdown reports them together.
"""

import os
import sys
from dataclasses import dataclass

import numpy as np

from ecgmamba.metrics import (METRIC_NAMES, bootstrap_ci, class_curve, compute_accuracy, compute_auc,
                              compute_challenge_metric, compute_f_measure, compute_scores)
from ecgmamba.records import parse_labels
from ecgmamba.scoring import ScoringTable, encode_labels, load_scoring

# Record-id prefix (followed by the record number) -> source database of the 2021 training data.
SOURCES = (
    ("HR", "PTB-XL"),
    ("JS", "Chapman-Shaoxing + Ningbo"),
    ("A", "CPSC"),
    ("Q", "CPSC-Extra"),
    ("I", "INCART"),
    ("S", "PTB"),
    ("E", "Georgia"),
)
POSITIVE_BINARY = ("1", "True", "true", "T", "t")


@dataclass
class Evaluation:
    """Labels and outputs of a scored folder, aligned by record: arrays are (records, classes)."""
    table: ScoringTable
    record_ids: list
    labels: np.ndarray  # bool
    binary_outputs: np.ndarray  # bool
    scalar_outputs: np.ndarray  # float64


def source_of(record_id):
    """Source database of a Challenge record id (e.g. 'HR00001' -> 'PTB-XL'); 'other' if unknown, such as the
    synthetic 'SYN00001' (a prefix counts only when a digit follows it)."""
    for prefix, source in SOURCES:
        if record_id.startswith(prefix) and record_id[len(prefix):len(prefix) + 1].isdigit():
            return source
    return "other"


def find_challenge_files(label_directory, output_directory):
    """Paired (label_files, output_files); every missing output file is named in one error."""
    for directory in (label_directory, output_directory):
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{directory} is not a folder")
    label_files, output_files, missing = [], [], []
    for name in sorted(os.listdir(label_directory)):
        label_file = os.path.join(label_directory, name)
        if name.startswith(".") or not name.lower().endswith(".hea") or not os.path.isfile(label_file):
            continue
        output_name = os.path.splitext(name)[0] + ".csv"
        output_file = os.path.join(output_directory, output_name)
        if os.path.isfile(output_file):
            label_files.append(label_file)
            output_files.append(output_file)
        else:
            missing.append(output_name)
    if missing:
        raise FileNotFoundError(f"{len(missing)} output file(s) missing from {output_directory} for the label "
                                f"files of {label_directory}: {', '.join(missing)}")
    if not label_files:
        raise FileNotFoundError(f"no label files (.hea) found in {label_directory}")
    return label_files, output_files


def load_labels(label_files, table):
    """(records, classes) bool from the `#Dx` codes of each header."""
    code_lists = []
    for label_file in label_files:
        with open(label_file, encoding="utf-8", errors="replace") as f:
            code_lists.append(parse_labels(f.read()))
    return encode_labels(code_lists, table)


def read_output_file(output_file):
    """(record id, classes, binary outputs, scalar outputs) of one output file, as stripped strings."""
    with open(output_file, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    if len(lines) < 4:
        raise ValueError(f"{output_file}: expected 4 lines (#record id, classes, binary outputs, scalar outputs), "
                         f"found {len(lines)}")
    recording_id = lines[0][1:].strip() if lines[0].startswith("#") else lines[0].strip()
    classes, binary, scalar = (tuple(entry.strip() for entry in line.split(",")) for line in lines[1:4])
    if not len(classes) == len(binary) == len(scalar):
        raise ValueError(f"{output_file}: {len(classes)} classes but {len(binary)} binary and {len(scalar)} "
                         f"scalar outputs")
    return recording_id, classes, binary, scalar


def load_classifier_outputs(output_files, table):
    """(binary, scalar) outputs, (records, classes), with the organizers' merging and sanitising rules.

    A malformed or empty output file is named on stderr and scored as all negative (the organizers' 2021 rule
    for formatting errors), so one broken file does not stop the scoring of thousands.
    """
    code_to_index = table.code_to_index()
    binary_outputs = np.zeros((len(output_files), table.num_classes), dtype=bool)
    scalar_outputs = np.zeros((len(output_files), table.num_classes), dtype=np.float64)
    for i, output_file in enumerate(output_files):
        try:
            _, classes, binary, scalar = read_output_file(output_file)
        except (ValueError, OSError) as error:
            print(f"- {error}; all its outputs are taken as negative", file=sys.stderr)
            continue
        binary_values = [[] for _ in range(table.num_classes)]
        scalar_values = [[] for _ in range(table.num_classes)]
        for entry, binary_entry, scalar_entry in zip(classes, binary, scalar):
            matched = {code_to_index[code] for code in entry.split("|") if code in code_to_index}
            for j in matched:
                binary_values[j].append(binary_entry in POSITIVE_BINARY)
                scalar_values[j].append(_finite_or_zero(scalar_entry))
        for j in range(table.num_classes):
            if binary_values[j]:
                binary_outputs[i, j] = any(binary_values[j])
                scalar_outputs[i, j] = np.mean(scalar_values[j])
    return binary_outputs, scalar_outputs


def load_evaluation(label_directory, output_directory, table):
    label_files, output_files = find_challenge_files(label_directory, output_directory)
    record_ids = [os.path.splitext(os.path.basename(path))[0] for path in label_files]
    binary_outputs, scalar_outputs = load_classifier_outputs(output_files, table)
    return Evaluation(table, record_ids, load_labels(label_files, table), binary_outputs, scalar_outputs)


def challenge_scores(evaluation):
    """The organizers' result tuple: (classes, auroc, auprc, auroc_classes, auprc_classes, accuracy,
    f_measure, f_measure_classes, challenge_metric); classes are sets of equivalent codes as theirs are."""
    e = evaluation
    auroc, auprc, auroc_classes, auprc_classes = compute_auc(e.labels, e.scalar_outputs)
    accuracy = compute_accuracy(e.labels, e.binary_outputs)
    f_measure, f_measure_classes = compute_f_measure(e.labels, e.binary_outputs)
    challenge_metric = compute_challenge_metric(e.table.weights, e.labels, e.binary_outputs,
                                                e.table.sinus_rhythm_index, organizers_order=True)
    classes = [set(codes) for codes in e.table.classes]
    return (classes, auroc, auprc, auroc_classes, auprc_classes, accuracy, f_measure, f_measure_classes,
            challenge_metric)


def evaluate_model(label_directory, output_directory, weights="2021"):
    """Score an output folder against a label folder; weights is "2021", "2020" or a weights.csv path."""
    table = weights if isinstance(weights, ScoringTable) else load_scoring(weights)
    return challenge_scores(load_evaluation(label_directory, output_directory, table))


def scores_by_source(evaluation):
    """[(source, number of records, scores dict)] per source database present, in SOURCES order."""
    e = evaluation
    sources = np.array([source_of(record_id) for record_id in e.record_ids])
    rows = []
    for source in [name for _, name in SOURCES] + ["other"]:
        chosen = sources == source
        if chosen.any():
            scores = compute_scores(e.labels[chosen], e.binary_outputs[chosen], e.scalar_outputs[chosen],
                                    e.table.weights, e.table.sinus_rhythm_index, organizers_order=True)
            rows.append((source, int(chosen.sum()), scores))
    return rows


def class_rows(evaluation):
    """One dict per class: abbreviation, codes, positives, predicted positives, AUROC, AUPRC, F-measure."""
    e = evaluation
    _, _, auroc, auprc = compute_auc(e.labels, e.scalar_outputs)
    _, f_measure = compute_f_measure(e.labels, e.binary_outputs)
    return [{"Class": abbreviation, "Codes": codes, "Positives": int(e.labels[:, j].sum()),
             "Predicted": int(e.binary_outputs[:, j].sum()), "AUROC": auroc[j], "AUPRC": auprc[j],
             "F-measure": f_measure[j]}
            for j, (abbreviation, codes) in enumerate(zip(e.table.class_abbreviations, e.table.class_codes))]


def bootstrap_rows(evaluation, n=1000, seed=0):
    """[(metric, score, low, high)]: the scores with 95 % bootstrap intervals over the records."""
    e = evaluation
    scores = compute_scores(e.labels, e.binary_outputs, e.scalar_outputs, e.table.weights,
                            e.table.sinus_rhythm_index, organizers_order=True)
    intervals = bootstrap_ci(e.labels, e.binary_outputs, e.scalar_outputs, e.table.weights,
                             e.table.sinus_rhythm_index, n=n, seed=seed)
    return [(name, scores[name], *intervals[name]) for name in METRIC_NAMES]


def format_table(columns, rows):
    """Plain-text table; floats with 3 decimals, NaN as 'nan'."""
    def cell(value):
        return f"{value:.3f}" if isinstance(value, (float, np.floating)) else str(value)

    cells = [[cell(row[column]) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(row[k]) for row in cells]) for k, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) if k == 0 else column.rjust(width)
                       for k, (column, width) in enumerate(zip(columns, widths)))]
    lines.append("  ".join("-" * width for width in widths))
    for row in cells:
        lines.append("  ".join(value.ljust(width) if k == 0 else value.rjust(width)
                               for k, (value, width) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def plot_curves(evaluation, directory):
    """One PNG per class with positive labels: ROC (left) and precision-recall (right) at the organizers'
    thresholds, i.e. the curves whose areas are the reported AUROC and AUPRC. Returns the written paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    e = evaluation
    os.makedirs(directory, exist_ok=True)
    _, _, auroc, auprc = compute_auc(e.labels, e.scalar_outputs)
    written = []
    for j, (abbreviation, codes) in enumerate(zip(e.table.class_abbreviations, e.table.class_codes)):
        positives = int(e.labels[:, j].sum())
        if positives == 0:
            continue
        tpr, tnr, ppv = class_curve(e.labels[:, j], e.scalar_outputs[:, j])
        figure = Figure(figsize=(9, 4.2))
        FigureCanvasAgg(figure)
        roc, pr = figure.subplots(1, 2)
        roc.plot(1 - tnr, tpr, label=f"AUROC {auroc[j]:.3f}")
        roc.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        roc.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)",
                xlim=(0, 1), ylim=(0, 1.02), title="ROC")
        # Precision ppv[i] holds for recall in (tpr[i-1], tpr[i]]: that step function's area is the AUPRC.
        pr.step(tpr, np.concatenate([ppv[1:2], ppv[1:]]), where="pre", label=f"AUPRC {auprc[j]:.3f}")
        pr.axhline(positives / len(e.labels), color="0.7", linestyle="--", linewidth=1)
        pr.set(xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", xlim=(0, 1), ylim=(0, 1.02),
               title="Precision-recall")
        for axes in (roc, pr):
            axes.legend(loc="lower right")
            axes.grid(alpha=0.3)
        figure.suptitle(f"{abbreviation} ({codes}): {positives} of {len(e.labels)} records positive")
        figure.tight_layout()
        path = os.path.join(directory, f"{j:02d}_{abbreviation.replace('|', '+')}.png")
        figure.savefig(path, dpi=100)
        written.append(path)
    return written


def _finite_or_zero(entry):
    try:
        value = float(entry)
    except ValueError:
        return 0.0
    return value if np.isfinite(value) else 0.0
