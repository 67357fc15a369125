#!/usr/bin/env python
"""The Challenge contract, a thin adapter over the ecgmamba package.

The organizers call training_code, load_model and run_model with their own train_model.py, run_model.py and
helper_code.py, so nothing here relies on anything but those three signatures.
"""

from ecgmamba.inference import load_model as _load_model
from ecgmamba.inference import run_model as _run_model
from ecgmamba.inference import run_models as _run_models
from ecgmamba.train import training_code as _training_code


def training_code(data_directory, model_directory):
    """Train models for the 12-, 6-, 4-, 3- and 2-lead sets; settings: README.md, 'Training settings'."""
    _training_code(data_directory, model_directory)


def load_model(model_directory, leads):
    return _load_model(model_directory, leads)


def run_model(model, header, recording):
    """(classes, labels, probabilities) for one recording: header text and the raw .mat 'val' array."""
    return _run_model(model, header, recording)


def run_models(model, headers, recordings):
    """Batched run_model; our run_model.py uses it when present (the organizers' driver does not need it)."""
    return _run_models(model, headers, recordings)
