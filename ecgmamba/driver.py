"""Running the team_code contract over a folder of recordings, as the organizers' run_model.py does.

Shared by run_model.py, test_model.py and the reduced-lead scorer. Unlike the organizers' loop, one recording that
cannot be read or classified never stops the run: its error is printed with the file name and an output CSV is
still written (the model's classes with all-negative labels, or the organizers' empty output when no class list
is known yet), so the evaluation sees every recording.
"""

import os
import sys
import time

import numpy as np
from tqdm import tqdm

from ecgmamba.records import RecordError, find_records, read_header, read_raw, sort_leads


def output_csv(recording_id, classes, labels, probabilities):
    """The organizers' output format: `#id`, classes, 0/1 labels, probabilities, one line each."""
    return "#{}\n{}\n{}\n{}\n".format(
        recording_id,
        ",".join(str(c) for c in classes),
        ",".join(str(int(l)) for l in labels),
        ",".join(str(float(p)) for p in probabilities),
    )


def write_atomic(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_folder(team_code, model_directory, data_directory, output_directory, progress=True, log=None,
               batch_size=16):
    """Run `team_code.load_model` / `team_code.run_model` on every recording of `data_directory`.

    Returns a dict with the counts of recordings done and failed and the list of (file, problem) failures.
    Raises RecordError when the folder holds no recording at all.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    header_files, problems = find_records(data_directory)
    for problem in problems:
        log(f"skipped {problem}")
    if not header_files:
        raise RecordError(data_directory, "no recordings (.hea with .mat) found")
    os.makedirs(output_directory, exist_ok=True)

    headers = {}
    for path in header_files:
        try:
            headers[path] = read_header(path)
        except RecordError as error:
            problems.append(str(error))
            log(f"skipped {error}")

    models, failures, known_classes = {}, [], [None]
    batch_run = getattr(team_code, "run_models", None)
    pending = []  # (path, header, recording) of one lead set, run together

    def fail(path, error):
        message = str(error) if isinstance(error, RecordError) else f"{path}: {error}"
        failures.append((path, message))
        log(f"failed {message}")

    def write(path, header, result):
        if result is None:  # no output: the model's classes, all negative (the organizers' driver writes none)
            classes = known_classes[0] or []
            result = (classes, [0] * len(classes), [0.0] * len(classes))
        else:
            known_classes[0] = list(result[0])
        root = os.path.splitext(os.path.basename(path))[0]
        write_atomic(os.path.join(output_directory, root + ".csv"), output_csv(header.record_id, *result))

    def flush():
        if not pending:
            return
        model = models[sort_leads(pending[0][1].leads)]
        results = None
        if batch_run is not None and len(pending) > 1:
            try:
                results = batch_run(model, [p[1].text for p in pending], [p[2] for p in pending])
            except Exception:  # noqa: BLE001 - fall back to one by one to find the culprit
                results = None
        for i, (path, header, recording) in enumerate(pending):
            result = results[i] if results is not None else None
            if result is None:
                try:
                    result = team_code.run_model(model, header.text, recording)
                except Exception as error:  # noqa: BLE001 - one bad recording must not stop the run
                    fail(path, error)
            write(path, header, result)
        pending.clear()

    start = time.time()
    for path in tqdm(header_files, desc="Running model", unit="rec", disable=not progress, file=sys.stderr):
        if path not in headers:
            continue
        header = headers[path]
        try:
            leads = sort_leads(header.leads)
            if leads not in models:
                models[leads] = team_code.load_model(model_directory, leads)
            recording = read_raw(os.path.splitext(path)[0] + ".mat", header)
        except Exception as error:  # noqa: BLE001
            fail(path, error)
            write(path, header, None)
            continue
        if pending and sort_leads(pending[0][1].leads) != leads:
            flush()
        pending.append((path, header, recording))
        if len(pending) >= batch_size:
            flush()
    flush()
    return {
        "done": len(headers) - len(failures),
        "failed": failures,
        "skipped": problems,
        "seconds": time.time() - start,
    }
