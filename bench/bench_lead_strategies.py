#!/usr/bin/env python
"""Compare the ways of serving the five lead sets (or any other training settings) on the same synthetic data.

    python bench/bench_lead_strategies.py [--train-records 600] [--test-records 300] [--epochs 6] [--work DIR]
        [--strategies shared separate ...] [--variant NAME=JSON ...]

- shared: one 12-input network trained with random lead-set reduction, sliced per lead set (the default);
- shared+finetune: the same, then one more epoch per lead set on its own leads;
- separate: five networks trained from scratch, one per lead set (five times the training compute).
--variant adds a row trained with other settings on top of the demo's, e.g.
`--variant 'lead scaling={"preprocess": {"scaling": "lead"}}'`.
Prints held-out macro AUROC (over the classes the generator produces) and Challenge metric per lead set, and the
training time of each row.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecgmamba import inference  # noqa: E402
from ecgmamba.demo import DEMO_SETTINGS, learnable_auroc  # noqa: E402
from ecgmamba.reduced_leads import score_lead_sets  # noqa: E402
from ecgmamba.scoring import load_scoring  # noqa: E402
from ecgmamba.synthetic import generate_dataset  # noqa: E402
from ecgmamba.train import TrainConfig, training_code  # noqa: E402

STRATEGIES = {
    "shared": dict(strategy="shared"),
    "shared+finetune": dict(strategy="shared", finetune_epochs=1),
    "separate": dict(strategy="separate"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-records", type=int, default=600)
    parser.add_argument("--test-records", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="another row: training settings (JSON object) added to the demo's")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()

    rows = {name: STRATEGIES[name] for name in args.strategies}
    for variant in args.variant:
        name, _, settings = variant.partition("=")
        try:
            rows[name] = json.loads(settings)
        except ValueError as error:
            parser.error(f"--variant {variant!r}: settings are not JSON ({error})")
    table = load_scoring("2021")
    work = args.work or tempfile.mkdtemp(prefix="lead_strategies_")
    train_dir, test_dir = os.path.join(work, "train"), os.path.join(work, "test")
    generate_dataset(train_dir, args.train_records, seed=0, fs="mixed", prefix="SYNTR")
    generate_dataset(test_dir, args.test_records, seed=1, fs="mixed", prefix="SYNTE")
    results = {}
    for name, settings in rows.items():
        model_dir = os.path.join(work, name.replace(" ", "_"))
        config = TrainConfig(**{**DEMO_SETTINGS, "epochs": args.epochs, "progress": False, **settings})
        start = time.perf_counter()
        training_code(train_dir, model_dir, config)
        seconds = time.perf_counter() - start
        rows = score_lead_sets(inference, model_dir, test_dir, os.path.join(work, name.replace(" ", "_") + "_scoring"), progress=False)
        results[name] = (seconds, rows)

    print(f"\n{args.train_records} training / {args.test_records} held-out synthetic records, {args.epochs} epochs, "
          f"small preset, CPU\n")
    print("| settings | training time (s) | " + " | ".join(
        f"{len(leads)} leads AUROC / Challenge" for leads, _ in next(iter(results.values()))[1]) + " |")
    print("| --- | ---: |" + " ---: |" * len(next(iter(results.values()))[1]))
    for name, (seconds, rows) in results.items():
        cells = [f"{learnable_auroc(scores, table):.3f} / {scores['Challenge metric']:.3f}" for _, scores in rows]
        print(f"| {name} | {seconds:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
