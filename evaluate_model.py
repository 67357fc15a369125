#!/usr/bin/env python

# Scores a folder of model outputs against a folder of labelled headers with the 2021 PhysioNet/Computing in
# Cardiology Challenge metrics, like the organizers' evaluate_model.py (same numbers, same files):
#
#   python evaluate_model.py labels outputs [scores.csv] [class_scores.csv]
#                            [--weights 2020|2021|PATH] [--by-source] [--bootstrap N] [--plots DIR]
#
# 'labels' holds the .hea files, 'outputs' one .csv per record as written by run_model.py. scores.csv gets
# AUROC, AUPRC, accuracy, macro F-measure and the Challenge metric; class_scores.csv the per-class AUROC,
# AUPRC and F-measure. Extras: --by-source breaks the scores down by source database, --bootstrap N adds
# 95 % intervals from N resamples of the records, --plots DIR writes ROC and precision-recall curves per class.
# The work is done in ecgmamba/evaluation.py and ecgmamba/metrics.py; the first lists the organizers' reading
# rules we follow and the few places where we differ on purpose (where their script stops with an exception).

import argparse
import sys

from ecgmamba.evaluation import (bootstrap_rows, challenge_scores, class_rows, evaluate_model, format_table,
                                 load_evaluation, plot_curves, scores_by_source)
from ecgmamba.metrics import METRIC_NAMES
from ecgmamba.scoring import load_scoring

__all__ = ["evaluate_model", "format_scores", "format_class_scores", "main"]


def format_scores(auroc, auprc, accuracy, f_measure, challenge_metric):
    """The organizers' scores.csv text (no trailing newline, 3 decimals)."""
    return "AUROC,AUPRC,Accuracy,F-measure,Challenge metric\n{:.3f},{:.3f},{:.3f},{:.3f},{:.3f}".format(
        auroc, auprc, accuracy, f_measure, challenge_metric)


def format_class_scores(classes, auroc_classes, auprc_classes, f_measure_classes):
    """The organizers' class_scores.csv text: equivalent codes sorted and joined with '|', as they print them."""
    return "Classes,{}\nAUROC,{}\nAUPRC,{}\nF-measure,{}".format(
        ",".join("|".join(sorted(codes)) for codes in classes),
        ",".join("{:.3f}".format(x) for x in auroc_classes),
        ",".join("{:.3f}".format(x) for x in auprc_classes),
        ",".join("{:.3f}".format(x) for x in f_measure_classes))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Score model outputs against labelled headers with the Challenge 2021 metrics.")
    parser.add_argument("labels", help="folder with the labelled .hea files")
    parser.add_argument("outputs", help="folder with one <record>.csv output file per header")
    parser.add_argument("scores", nargs="?", help="write the scores here (scores.csv format)")
    parser.add_argument("class_scores", nargs="?", help="write the per-class scores here (class_scores.csv)")
    parser.add_argument("--weights", default="2021", help="scoring table: 2021 (default), 2020 or a weights.csv")
    parser.add_argument("--by-source", action="store_true", help="also score each source database separately")
    parser.add_argument("--bootstrap", type=int, metavar="N", help="95 %% intervals from N resamples of the records")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap (default 0)")
    parser.add_argument("--plots", metavar="DIR", help="write ROC and precision-recall curves per class here")
    args = parser.parse_args(argv)
    if args.bootstrap is not None and args.bootstrap < 1:
        parser.error("--bootstrap needs a positive number of resamples")

    try:
        table = load_scoring(args.weights)
        evaluation = load_evaluation(args.labels, args.outputs, table)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    (classes, auroc, auprc, auroc_classes, auprc_classes, accuracy, f_measure, f_measure_classes,
     challenge_metric) = challenge_scores(evaluation)
    output_string = format_scores(auroc, auprc, accuracy, f_measure, challenge_metric)
    class_output_string = format_class_scores(classes, auroc_classes, auprc_classes, f_measure_classes)
    if args.scores:
        with open(args.scores, "w") as f:
            f.write(output_string)
    if args.class_scores:
        with open(args.class_scores, "w") as f:
            f.write(class_output_string)

    print(f"{len(evaluation.record_ids)} records, {table.num_classes} scored classes\n")
    print(output_string + "\n")
    print(format_table(["Class", "Codes", "Positives", "Predicted", "AUROC", "AUPRC", "F-measure"],
                       class_rows(evaluation)))
    if args.by_source:
        rows = [dict(Source=source, Records=count, **scores) for source, count, scores in scores_by_source(evaluation)]
        print("\nBy source database (Chapman-Shaoxing and Ningbo share the JS prefix):")
        print(format_table(["Source", "Records", *METRIC_NAMES], rows))
    if args.bootstrap:
        rows = [{"Metric": name, "Score": score, "2.5 %": low, "97.5 %": high}
                for name, score, low, high in bootstrap_rows(evaluation, n=args.bootstrap, seed=args.seed)]
        print(f"\n95 % bootstrap intervals ({args.bootstrap} resamples of the records, seed {args.seed}):")
        print(format_table(["Metric", "Score", "2.5 %", "97.5 %"], rows))
    if args.plots:
        written = plot_curves(evaluation, args.plots)
        print(f"\nWrote {len(written)} ROC/precision-recall plots to {args.plots} (classes with positive labels).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
