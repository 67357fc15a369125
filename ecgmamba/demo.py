"""The demo: synthetic data -> train all five lead sets on the CPU preset -> score held-out records per lead set.

    python -m ecgmamba.demo [--work DIR] [--train-records N] [--test-records N] [--epochs E]

Everything runs on the package's own synthetic Challenge-format data, so it needs no download. The final table
is the reduced-lead score table of the organizers' metrics, plus the macro AUROC over the classes the synthetic
generator can actually produce (the other scored classes never occur in its data, so their AUROC is undefined).
"""

import argparse
import os
import sys
import time

import numpy as np

from ecgmamba.reduced_leads import METRIC_NAMES, score_lead_sets
from ecgmamba.scoring import load_scoring
from ecgmamba.synthetic import LEARNABLE_CLASSES, generate_dataset
from ecgmamba.train import TrainConfig, training_code


# The CPU preset with its defaults (batch 16, lr 3e-3, mean + max pooling, signals in mV), on the CPU.
DEMO_SETTINGS = dict(preset="small", device="cpu")


def learnable_auroc(scores, table):
    """Macro AUROC over the classes with a code the generator produces."""
    learnable = [j for j, codes in enumerate(table.classes) if set(codes) & set(LEARNABLE_CLASSES)]
    return float(np.nanmean(np.asarray(scores["auroc_classes"])[learnable]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="demo_run", help="folder for data, model and outputs (default demo_run)")
    parser.add_argument("--train-records", type=int, default=1000)
    parser.add_argument("--test-records", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.time()
    train_dir = os.path.join(args.work, "training_data")
    test_dir = os.path.join(args.work, "test_data")
    model_dir = os.path.join(args.work, "model")
    print(f"1/3 Generating {args.train_records} training and {args.test_records} test records "
          f"(synthetic, Challenge format) in {args.work}/ ...", flush=True)
    generate_dataset(train_dir, args.train_records, seed=args.seed, fs="mixed", prefix="SYNTR")
    generate_dataset(test_dir, args.test_records, seed=args.seed + 1, fs="mixed", prefix="SYNTE")

    print("2/3 Training the CPU preset for the 12-, 6-, 4-, 3- and 2-lead sets ...", flush=True)
    config = TrainConfig(**DEMO_SETTINGS, epochs=args.epochs, seed=args.seed)
    training_code(train_dir, model_dir, config)

    print("3/3 Running the models on the held-out records and scoring each lead set ...", flush=True)
    from ecgmamba import inference  # has the team_code contract's load_model / run_model / run_models

    table = load_scoring("2021")
    rows = score_lead_sets(inference, model_dir, test_dir, os.path.join(args.work, "scoring"), progress=False)
    names = METRIC_NAMES + ("AUROC (learnable)",)
    print()
    print(f"{'Leads':<8}" + "".join(f"{name:>19}" for name in names))
    for leads, scores in rows:
        values = [scores[name] for name in METRIC_NAMES] + [learnable_auroc(scores, table)]
        print(f"{len(leads):<8}" + "".join(f"{v:>19.3f}" for v in values))
    print(f"\nDemo finished in {time.time() - started:.0f} s (model in {model_dir}/).")


if __name__ == "__main__":
    main()
