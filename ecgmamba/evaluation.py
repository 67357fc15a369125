"""Scoring a folder of model outputs against a folder of labelled headers, the way the organizers did.

Every rule below is the one of the organizers' final evaluate_model.py and helper_code.py (evaluation-2021
repository), so the same folders give the same numbers:
- label files are the top-level files of the label folder whose name ends in `.hea` in any case and does not
  start with '.', in sorted order; `<root>.csv` of the output folder belongs to `<root>.hea`;
- labels: every header line that starts with exactly `#Dx`; its codes are what follows the first ': ', up to
  the next ': ', split at ',' and stripped (so `#Dx:a`, `# Dx: a` and `#dx: a` give no codes). This is
  stricter than ecgmamba.records.parse_labels, which training uses, on purpose: the scorer reads what the
  organizers' scorer reads;
- an output file's first four lines (universal newlines) are `#record id`, classes, binary outputs and
  scalar outputs, split at ','; class and binary entries are stripped, scalar entries are not;
- a class column counts for every scored class one of its '|'-separated codes belongs to (spaces around
  '|' are kept, so ' 59118001' matches nothing); several columns for one class: binary positive if any is,
  scalar their mean. Scored classes without a column are 0, columns of unscored codes are ignored;
- a binary entry is positive when Python's float() reads it as a finite number equal to 1 ("1", "1.0",
  "1e0", "+1") or when it is True, true, T or t; anything else is negative;
- a scalar entry that float() does not read as a finite number ("nan", "inf", "1e400", "", text) is 0;
- a weights.csv entry that is not a finite number is NaN, left out of the Challenge metric's sum, and the
  always-sinus-rhythm reference is the class that is 426783006 alone (ecgmamba.scoring).

Deliberate differences, all where the organizers' code stops with an exception instead of a score:
- every missing output file is named in one error (theirs raises on the first);
- an output file their loader would crash on is named on stderr and scored as all negative: fewer than four
  lines, a scored class column without its binary or scalar entry (rows of different lengths), or text that
  is not UTF-8. Rows of different lengths where every scored column has its entries score as theirs do
  (extra entries ignored), with a note on stderr;
- a label file that is not UTF-8 is read with replacement characters (theirs raises);
- blank lines in a weights.csv are skipped (theirs raises).
Two refusals the other way, for weights.csv files theirs scores: a code in two classes is an error (theirs
counts it for both; our tables are also the training class list, where a code has one place), and so is a
row of another length (theirs ignores extra entries in the last row and only there).

Record ids tell the source database (see SOURCES). Chapman-Shaoxing and Ningbo records both start with
"JS", so the breakdown reports them together.
"""

import itertools
import os
import sys
from dataclasses import dataclass

import numpy as np

from ecgmamba.metrics import (METRIC_NAMES, bootstrap_ci, class_curve, compute_accuracy, compute_auc,
                              compute_challenge_metric, compute_f_measure, compute_scores)
from ecgmamba.scoring import ScoringTable, load_scoring

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
# Binary spellings that count as positive besides numbers equal to 1.
POSITIVE_WORDS = ("True", "true", "T", "t")


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


def challenge_labels(header_text):
    """The codes the organizers' scorer takes from a header (their get_labels), duplicates and blanks kept.

    A line counts only if it starts with exactly '#Dx'; its codes are the text between the first and the
    second ': ', split at ','. Training reads headers more leniently (ecgmamba.records.parse_labels).
    """
    codes = []
    for line in header_text.split("\n"):
        if line.startswith("#Dx"):
            parts = line.split(": ")
            if len(parts) > 1:
                codes.extend(code.strip() for code in parts[1].split(","))
    return codes


def load_labels(label_files, table):
    """(records, classes) bool: a class is positive if one of its codes is among the header's `#Dx` codes."""
    classes = [set(codes) for codes in table.classes]
    labels = np.zeros((len(label_files), table.num_classes), dtype=bool)
    for i, label_file in enumerate(label_files):
        with open(label_file, encoding="utf-8", errors="replace") as f:
            codes = set(challenge_labels(f.read()))
        labels[i] = [bool(class_codes & codes) for class_codes in classes]
    return labels


def read_output_file(output_file):
    """(record id, classes, binary outputs, scalar outputs) of one output file: its first four lines split at ','.

    Class and binary entries are stripped; scalar entries are kept as written, because the organizers give
    those to float() unstripped, and float() does not ignore every character that str.strip() removes.
    """
    try:
        with open(output_file, encoding="utf-8") as f:
            lines = list(itertools.islice(f, 4))
    except UnicodeDecodeError as error:
        raise ValueError(f"{output_file}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if len(lines) < 4:
        raise ValueError(f"{output_file}: expected 4 lines (#record id, classes, binary outputs, scalar outputs), "
                         f"found {len(lines)}")
    recording_id = lines[0][1:].strip() if lines[0].startswith("#") else lines[0].strip()
    classes, binary = (tuple(entry.strip() for entry in line.split(",")) for line in lines[1:3])
    scalar = tuple(lines[3].split(","))
    return recording_id, classes, binary, scalar


def is_positive_binary(entry):
    """A binary output entry (stripped) is positive if it is a finite number equal to 1 or a 'true' word."""
    value = _finite_or_none(entry)
    return (value is not None and value == 1) or entry in POSITIVE_WORDS


def load_classifier_outputs(output_files, table):
    """(binary, scalar) outputs, (records, classes), with the organizers' matching and sanitising rules.

    A file their loader would crash on is named on stderr and scored as all negative, so one broken file does
    not stop the scoring of thousands.
    """
    class_sets = [set(codes) for codes in table.classes]
    binary_outputs = np.zeros((len(output_files), table.num_classes), dtype=bool)
    scalar_outputs = np.zeros((len(output_files), table.num_classes), dtype=np.float64)
    for i, output_file in enumerate(output_files):
        try:
            binary_outputs[i], scalar_outputs[i] = _record_outputs(output_file, class_sets)
        except (ValueError, OSError) as error:
            print(f"- {error}; all its outputs are taken as negative", file=sys.stderr)
    return binary_outputs, scalar_outputs


def _record_outputs(output_file, class_sets):
    """One output file's (binary, scalar) row over the scored classes (sets of equivalent codes)."""
    _, classes, binary, scalar = read_output_file(output_file)
    column_sets = [set(entry.split("|")) for entry in classes]
    columns_of_class = [[k for k, column in enumerate(column_sets) if not column.isdisjoint(codes)]
                        for codes in class_sets]
    last_complete = min(len(binary), len(scalar))
    short = sorted({k for columns in columns_of_class for k in columns if k >= last_complete})
    if short:
        raise ValueError(f"{output_file}: scored class column {short[0] + 1} ({classes[short[0]]!r}) has no "
                         f"{'binary' if short[0] >= len(binary) else 'scalar'} output ({len(classes)} classes, "
                         f"{len(binary)} binary and {len(scalar)} scalar outputs)")
    if not len(classes) == len(binary) == len(scalar):
        print(f"- {output_file}: {len(classes)} classes, {len(binary)} binary and {len(scalar)} scalar outputs; "
              "entries outside the scored columns are ignored, as the organizers do", file=sys.stderr)
    binary_row = np.zeros(len(class_sets), dtype=bool)
    scalar_row = np.zeros(len(class_sets), dtype=np.float64)
    for j, columns in enumerate(columns_of_class):
        if columns:
            binary_row[j] = any(is_positive_binary(binary[k]) for k in columns)
            with np.errstate(over="ignore", invalid="ignore"):  # a mean of huge values may overflow, as theirs does
                scalar_row[j] = np.mean([_finite_or_zero(scalar[k]) for k in columns])
    return binary_row, scalar_row


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


def _finite_or_none(entry):
    """float(entry) if that is a finite number, else None (the organizers' is_finite_number test)."""
    try:
        value = float(entry)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _finite_or_zero(entry):
    value = _finite_or_none(entry)
    return 0.0 if value is None else value
