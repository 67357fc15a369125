#!/usr/bin/env python
"""Train the models: python train_model.py training_data model (the organizers' command)."""

import sys

from team_code import training_code

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python train_model.py DATA_DIRECTORY MODEL_DIRECTORY\n"
                 "  e.g. python train_model.py training_data model")
    data_directory, model_directory = sys.argv[1], sys.argv[2]
    print("Running training code...")
    training_code(data_directory, model_directory)
    print("Done.")
