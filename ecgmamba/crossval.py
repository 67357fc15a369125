"""Cross-validation in one command, for numbers that stand beside the published ones.

    python -m ecgmamba.crossval DATA_DIRECTORY OUTPUT_DIRECTORY [--folds 5] [--seeds 3] [--split stratified|source]

Each (seed, fold) trains with exactly the settings train_model.py would use (OUTPUT_DIRECTORY/train_config.json,
then the ECGMAMBA_* environment variables, and the seed), runs the five lead sets on the held-out records through
the team_code contract (the organizers' reduced-lead copies, load_model, run_model), and scores them with the
project's evaluation. The table gives mean +- standard deviation over all folds and seeds, one row per lead set, and
per class for 12 leads.

--split stratified: multilabel-stratified k folds (iterative stratification), re-drawn for every seed.
--split source: leave one source database out (record-id prefixes; Chapman-Shaoxing and Ningbo share "JS" and
  form one source), the closest public stand-in for the organizers' hidden test on unseen hospitals; --folds is
  then the number of sources present, and --seeds repeats the training only.

A fold is done when its scores.json exists; a rerun skips finished folds and resumes an interrupted one from its
training checkpoints (the training keeps them until it finishes).
"""

import argparse
import csv
import importlib
import json
import os
import shutil
import sys
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from ecgmamba.checkpoint import save_json
from ecgmamba.evaluation import source_of
from ecgmamba.records import LEAD_SETS, RecordError, find_records, read_header
from ecgmamba.scoring import encode_labels, load_scoring

METRICS = ("AUROC", "AUPRC", "F-measure", "Accuracy", "Challenge metric")
# Published 2021-data results to put a line under (mean over their own protocol; see docs/REPRODUCE.md).
REFERENCE_ROWS = [
    ("ECG-Mamba-V2 (published, 3 seeds x 5 folds, 12 leads)", {"AUROC": 0.9716, "AUPRC": 0.6494}),
    ("1D-CNN ECG Mamba (published, 12 leads)", {"AUROC": 0.9695, "AUPRC": 0.641}),
    ("2021 winner, organizers' hidden test (Challenge metric, every lead set)", {"Challenge metric": 0.58}),
]


class CrossValidationError(ValueError):
    """The data cannot be split as asked; the message says why and what to change."""


def read_dataset(data_directory, table):
    """(header paths, record ids, labels (records, classes) bool, sources) of every readable record."""
    header_files, problems = find_records(data_directory, recursive=True)
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    paths, ids, codes = [], [], []
    for path in header_files:
        try:
            header = read_header(path)
        except RecordError as error:
            print(f"skipped {error}", file=sys.stderr)
            continue
        paths.append(path)
        ids.append(os.path.splitext(os.path.basename(path))[0])
        codes.append(header.labels)
    seen = {}
    for path, record_id in zip(paths, ids):
        if record_id in seen:
            raise CrossValidationError(f"record name {record_id} appears twice ({seen[record_id]} and {path}); "
                                       "the held-out folds are scored in one flat folder, so names must be unique")
        seen[record_id] = path
    return paths, ids, encode_labels(codes, table), [source_of(record_id) for record_id in ids]


def make_folds(labels, sources, split, folds, seeds, table):
    """{(seed, fold): (train indices, test indices)} and the fold names."""
    n = len(labels)
    plan, names = {}, {}
    if split == "source":
        groups = sorted(set(sources))
        if len(groups) < 2:
            raise CrossValidationError(f"--split source needs records of at least 2 source databases; all {n} "
                                       f"records are from {groups[0] if groups else 'none'}")
        for seed in range(seeds):
            for k, group in enumerate(groups):
                test = np.flatnonzero(np.asarray(sources) == group)
                plan[(seed, k)] = (np.setdiff1d(np.arange(n), test), test)
                names[k] = group
        return plan, names
    if folds < 2:
        raise CrossValidationError(f"--folds must be at least 2, not {folds}")
    if n < folds:
        raise CrossValidationError(f"{n} usable records cannot make {folds} folds; use --folds {max(2, n)} or fewer")
    positives = labels.sum(0)
    scarce = [f"{table.class_abbreviations[j]} ({table.class_codes[j]}: {int(positives[j])})"
              for j in range(labels.shape[1]) if 0 < positives[j] < folds]
    if scarce:
        raise CrossValidationError(f"these classes have fewer positive records than the {folds} folds, so some "
                                   f"folds would hold none: {', '.join(scarce)}; use fewer folds or more data")
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    for seed in range(seeds):
        splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (train, test) in enumerate(splitter.split(np.zeros(n), labels.astype(int))):
            plan[(seed, k)] = (np.sort(train), np.sort(test))
            names[k] = f"fold {k + 1}"
    return plan, names


def link_records(paths, directory):
    """A flat folder of symbolic links to the records' .hea and .mat files (copies where links fail)."""
    os.makedirs(directory, exist_ok=True)
    for path in paths:
        root = os.path.splitext(path)[0]
        for source in (root + ".hea", root + ".mat"):
            target = os.path.join(directory, os.path.basename(source))
            if os.path.lexists(target):
                continue
            try:
                os.symlink(os.path.abspath(source), target)
            except OSError:
                shutil.copyfile(source, target)


def run_fold(paths, train, test, fold_directory, config, team_code, table, progress):
    """Train on `train`, score every lead set on `test`; returns and saves the fold's scores."""
    from ecgmamba.reduced_leads import score_lead_sets
    from ecgmamba.train import training_code

    train_dir = os.path.join(fold_directory, "train_data")
    test_dir = os.path.join(fold_directory, "test_data")
    model_dir = os.path.join(fold_directory, "model")
    link_records([paths[i] for i in train], train_dir)
    link_records([paths[i] for i in test], test_dir)
    training_code(train_dir, model_dir, config)
    scores = {"train_records": len(train), "test_records": len(test), "lead_sets": {}}
    for leads, row in score_lead_sets(team_code, model_dir, test_dir, fold_directory, weights=table,
                                      progress=progress, keep_copies=False):
        scores["lead_sets"][str(len(leads))] = {
            **{name: float(row[name]) for name in METRICS},
            "classes": {"AUROC": list(map(float, row["auroc_classes"])),
                        "AUPRC": list(map(float, row["auprc_classes"])),
                        "F-measure": list(map(float, row["f_measure_classes"]))}}
    for name in ("train_data", "test_data"):
        shutil.rmtree(os.path.join(fold_directory, name), ignore_errors=True)
    save_json(os.path.join(fold_directory, "scores.json"), scores)
    return scores


def mean_std(values):
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarise(fold_scores, table):
    """Lead-set rows and 12-lead class rows: {name: {metric: (mean, std)}}, over every fold and seed."""
    lead_rows = {}
    for leads in LEAD_SETS:
        key = str(len(leads))
        lead_rows[f"{len(leads)} leads"] = {m: mean_std([s["lead_sets"][key][m] for s in fold_scores])
                                            for m in METRICS}
    class_rows = {}
    for j, abbreviation in enumerate(table.class_abbreviations):
        class_rows[abbreviation] = {m: mean_std([s["lead_sets"]["12"]["classes"][m][j] for s in fold_scores])
                                    for m in ("AUROC", "AUPRC", "F-measure")}
    return lead_rows, class_rows


def format_markdown(lead_rows, class_rows, runs, split):
    def cell(pair):
        mean, std = pair
        return "n/a" if not np.isfinite(mean) else f"{mean:.4f} ± {std:.4f}"

    lines = [f"Cross-validation, {split} split: mean ± standard deviation over {runs} runs (folds x seeds).", "",
             "| model / lead set | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for name, row in lead_rows.items():
        lines.append(f"| ecgmamba, {name} | " + " | ".join(cell(row[m]) for m in METRICS) + " |")
    for name, values in REFERENCE_ROWS:
        lines.append(f"| {name} | " + " | ".join(f"{values[m]:.4f}" if m in values else "" for m in METRICS) + " |")
    lines += ["", "Per class, 12 leads:", "", "| class | AUROC | AUPRC | F-measure |", "|---|---:|---:|---:|"]
    for name, row in class_rows.items():
        lines.append(f"| {name} | {cell(row['AUROC'])} | {cell(row['AUPRC'])} | {cell(row['F-measure'])} |")
    return "\n".join(lines)


def write_csv(path, lead_rows, class_rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row"] + [f"{m} {k}" for m in METRICS for k in ("mean", "std")])
        for name, row in lead_rows.items():
            writer.writerow([name] + [f"{v:.6f}" for m in METRICS for v in row[m]])
        for name, row in class_rows.items():
            writer.writerow([f"12 leads, class {name}"] +
                            [f"{v:.6f}" for m in METRICS for v in row.get(m, (float("nan"), float("nan")))])


def cross_validate(data_directory, output_directory, folds=5, seeds=3, split="stratified", team_code=None,
                   progress=True):
    """Run (or resume) the cross-validation; returns (lead rows, class rows) and writes crossval.{md,csv,json}."""
    from ecgmamba.train import load_train_config

    if split not in ("stratified", "source"):
        raise CrossValidationError(f"--split must be 'stratified' or 'source', not {split!r}")
    if seeds < 1:
        raise CrossValidationError(f"--seeds must be at least 1, not {seeds}")
    os.makedirs(output_directory, exist_ok=True)
    team_code = team_code or importlib.import_module("team_code")
    table = load_scoring("2021")
    base = load_train_config(output_directory)  # OUTPUT/train_config.json and ECGMAMBA_*, as train_model.py reads
    paths, _, labels, sources = read_dataset(data_directory, table)
    if not paths:
        raise CrossValidationError(f"{data_directory}: no readable recordings")
    plan, names = make_folds(labels, sources, split, folds, seeds, table)
    save_json(os.path.join(output_directory, "crossval_plan.json"), {
        "data_directory": os.path.abspath(data_directory), "split": split, "seeds": seeds,
        "folds": {str(k): name for k, name in names.items()},
        "test_records": {f"seed{s}_fold{k}": [os.path.basename(paths[i])[:-4] for i in test]
                         for (s, k), (_, test) in plan.items()}})
    fold_scores = []
    bar = tqdm(sorted(plan.items()), desc="Cross-validation", unit="fold", disable=not progress, file=sys.stderr)
    for (seed, k), (train, test) in bar:
        fold_directory = os.path.join(output_directory, f"seed{seed}", f"fold{k + 1}")
        scores_path = os.path.join(fold_directory, "scores.json")
        bar.set_postfix(seed=seed, fold=names[k])
        if os.path.isfile(scores_path):
            with open(scores_path) as f:
                fold_scores.append(json.load(f))
            continue
        tqdm.write(f"seed {seed}, {names[k]}: training on {len(train)}, testing on {len(test)} records",
                   file=sys.stderr)
        config = replace(base, seed=seed, keep_work=False, progress=progress and base.progress)
        fold_scores.append(run_fold(paths, train, test, fold_directory, config, team_code, table, progress))
    lead_rows, class_rows = summarise(fold_scores, table)
    markdown = format_markdown(lead_rows, class_rows, len(fold_scores), split)
    with open(os.path.join(output_directory, "crossval.md"), "w") as f:
        f.write(markdown + "\n")
    write_csv(os.path.join(output_directory, "crossval.csv"), lead_rows, class_rows)
    save_json(os.path.join(output_directory, "crossval.json"),
              {"split": split, "runs": len(fold_scores), "lead_sets": lead_rows, "classes": class_rows})
    return lead_rows, class_rows, markdown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_directory")
    parser.add_argument("output_directory")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--split", choices=["stratified", "source"], default="stratified")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data_directory):
        parser.error(f"{args.data_directory}: no such folder")
    sys.path.insert(0, os.getcwd())
    try:
        _, _, markdown = cross_validate(args.data_directory, args.output_directory, args.folds, args.seeds,
                                        args.split, progress=not args.no_progress)
    except (CrossValidationError, RecordError) as error:
        sys.exit(f"error: {error}")
    print(markdown)


if __name__ == "__main__":
    main()
