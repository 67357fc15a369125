"""Score a model on the five reduced-lead versions of a labelled data set, as the 2021 Challenge did.

    python -m ecgmamba.reduced_leads MODEL_DIR DATA_DIR [--work DIR] [--weights 2021|2020|PATH]

For each lead set (12, 6, 4, 3, 2) it writes a copy of the data with the other leads removed from both the header
and the .mat file, runs the model through the team_code contract on it, scores the outputs with the organizers'
metrics and prints one table with a row per lead set.
"""

import argparse
import importlib
import os
import shutil
import sys
import tempfile

import numpy as np
import scipy.io

from ecgmamba.driver import run_folder
from ecgmamba.metrics import METRIC_NAMES
from ecgmamba.records import LEAD_SETS, RecordError, find_records, read_header, read_raw


def reduce_header(text, leads, path="<header>"):
    """Header text keeping only the signal lines of `leads`, in that order; comments untouched (also blank or
    comment lines before the record line, which the reader accepts)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), None)
    first = lines[start].split() if start is not None else []
    if len(first) < 2 or not first[1].isdigit():
        raise RecordError(path, "no record line with a lead count")
    num_leads = int(first[1])
    signal_lines = lines[start + 1:start + 1 + num_leads]
    by_lead = {}
    for line in signal_lines:
        if line.split():
            by_lead.setdefault(line.split()[-1], line)  # a duplicated name: the first, as the reader does
    missing = [lead for lead in leads if lead not in by_lead]
    if missing:
        raise RecordError(path, f"leads {missing} not in header")
    first[1] = str(len(leads))
    return "\n".join(lines[:start] + [" ".join(first)] + [by_lead[lead] for lead in leads]
                     + lines[start + 1 + num_leads:])


def write_reduced_copy(data_directory, output_directory, leads):
    """Copy every readable recording of `data_directory` (and its sub-folders, as the public data unpacks into one
    folder per database) into `output_directory`, flat, with only `leads` kept. Returns the problems met."""
    os.makedirs(output_directory, exist_ok=True)
    header_files, problems = find_records(data_directory, recursive=True)
    written = {}
    for header_file in header_files:
        name = os.path.splitext(os.path.basename(header_file))[0]
        if name in written:  # flat output: a second record of the same name would overwrite the first
            problems.append(f"{header_file}: record name {name} already taken by {written[name]}")
            continue
        try:
            header = read_header(header_file)
            recording = read_raw(os.path.splitext(header_file)[0] + ".mat", header)
            text = reduce_header(header.text, leads, header_file)
            rows = [header.leads.index(lead) for lead in leads]
        except (RecordError, ValueError) as error:
            problems.append(str(error))
            continue
        written[name] = header_file
        root = os.path.join(output_directory, name)
        with open(root + ".hea", "w") as f:
            f.write(text)
        scipy.io.savemat(root + ".mat", {"val": np.ascontiguousarray(recording[rows])}, format="4")
    return problems


def score_lead_sets(team_code, model_directory, data_directory, work_directory, lead_sets=LEAD_SETS,
                    weights="2021", progress=True, keep_copies=True):
    """Returns a list of (leads, scores dict) rows, one per lead set; per-class AUROC, AUPRC and F-measure are in
    auroc_classes, auprc_classes and f_measure_classes. keep_copies=False removes each reduced copy once scored
    (the outputs stay): it is as large as the data."""
    from ecgmamba.evaluation import evaluate_model

    rows = []
    for leads in lead_sets:
        name = f"{len(leads)}_leads"
        reduced = os.path.join(work_directory, name, "data")
        outputs = os.path.join(work_directory, name, "outputs")
        for problem in write_reduced_copy(data_directory, reduced, leads):
            print(f"skipped {problem}", file=sys.stderr)
        run_folder(team_code, model_directory, reduced, outputs, progress=progress)
        result = evaluate_model(reduced, outputs, weights=weights)
        _, auroc, auprc, auroc_classes, auprc_classes, accuracy, f_measure, f_measure_classes, challenge = result
        scores = dict(zip(METRIC_NAMES, (auroc, auprc, accuracy, f_measure, challenge)))
        scores.update(auroc_classes=list(auroc_classes), auprc_classes=list(auprc_classes),
                      f_measure_classes=list(f_measure_classes))
        rows.append((leads, scores))
        if not keep_copies:
            shutil.rmtree(reduced, ignore_errors=True)
    return rows


def format_table(rows):
    header = f"{'Leads':<40}" + "".join(f"{name:>18}" for name in METRIC_NAMES)
    lines = [header, "-" * len(header)]
    for leads, scores in rows:
        label = f"{len(leads)}: {','.join(leads)}"
        lines.append(f"{label:<40}" + "".join(f"{scores[name]:>18.3f}" for name in METRIC_NAMES))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_directory")
    parser.add_argument("data_directory", help="labelled 12-lead Challenge data (.hea + .mat)")
    parser.add_argument("--work", help="folder for the reduced-lead copies and outputs (default: a temp folder)")
    parser.add_argument("--weights", default="2021", help="2021, 2020 or a weights.csv path")
    parser.add_argument("--team-code", default="team_code", help="module with load_model and run_model")
    args = parser.parse_args(argv)

    for name in ("model_directory", "data_directory"):
        if not os.path.isdir(getattr(args, name)):
            parser.error(f"{getattr(args, name)}: no such folder")
    sys.path.insert(0, os.getcwd())
    try:
        team_code = importlib.import_module(args.team_code)
    except ImportError as error:
        parser.error(f"cannot import --team-code {args.team_code!r}: {error}")
    with tempfile.TemporaryDirectory() as scratch:
        try:
            rows = score_lead_sets(team_code, args.model_directory, args.data_directory, args.work or scratch,
                                   weights=args.weights)
        except (RecordError, ValueError) as error:
            sys.exit(f"error: {error}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
