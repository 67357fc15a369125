#!/usr/bin/env python
"""Run the models: python run_model.py model test_data test_outputs (the organizers' command and output).

Writes one CSV per recording. A recording that cannot be read or classified is reported with its file name and
still gets a CSV; the run goes on, and exits non-zero only if no recording could be processed.
"""

import sys

import team_code
from ecgmamba.driver import run_folder


def main(argv, program="run_model.py"):
    if len(argv) != 3:
        sys.exit(f"usage: python {program} MODEL_DIRECTORY DATA_DIRECTORY OUTPUT_DIRECTORY\n"
                 f"  e.g. python {program} model test_data test_outputs")
    model_directory, data_directory, output_directory = argv
    print("Running model...")
    summary = run_folder(team_code, model_directory, data_directory, output_directory)
    print(f"Done: {summary['done']} recordings, {len(summary['failed'])} failed, "
          f"{len(summary['skipped'])} skipped, {summary['seconds']:.1f} s.")
    if summary["done"] == 0:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
