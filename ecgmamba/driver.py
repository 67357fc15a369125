"""Running the team_code contract over a folder of recordings, as the organizers' run_model.py does.

Shared by run_model.py, test_model.py and the reduced-lead scorer. Unlike the organizers' loop, one recording that
cannot be read or classified never stops the run: one line naming the file and the problem is printed and an
output CSV is still written (the model's classes, all-negative labels and the model's training prevalence as
probabilities), so the evaluation sees every header. docs/FAULTS.md lists what happens to each kind of bad input.
"""

import os
import sys
import time

from tqdm import tqdm

from ecgmamba.records import (TWELVE_LEADS, RecordError, find_records, read_header, read_raw, recording_path,
                              require_standard_leads)


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
               batch_size=16, max_batch_samples=2**23):
    """Run `team_code.load_model` / `team_code.run_model` on every header (.hea) of `data_directory`.

    Every header gets `<name>.csv`, even one that cannot be parsed or has no .mat beside it (the evaluation
    expects an output per header); a .mat without a header is reported and skipped. Recordings of one lead set
    run together through `team_code.run_models` when it exists, at most batch_size recordings and, beyond the
    first, max_batch_samples raw samples at a time, so long records keep memory bounded.

    Returns a dict with the number of recordings done, the (file, problem) failures, the skipped files and the
    seconds taken. Raises RecordError when the folder holds no header at all.
    """
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))  # on its own line, not after the bar
    header_files, problems = find_records(data_directory, headers_without_recording=True)
    for problem in problems:
        log(f"skipped {problem}")
    if not header_files:
        raise RecordError(data_directory, "no recordings (.hea files) found")
    os.makedirs(output_directory, exist_ok=True)

    models = {}  # leads -> loaded model, or the error that loading it raised
    failures, known_classes = [], [None]
    batch_run = getattr(team_code, "run_models", None)
    pending = []  # (path, header, leads, recording) of one lead set, run together

    def get_model(leads):
        if leads not in models:
            try:
                models[leads] = team_code.load_model(model_directory, leads)
            except Exception as error:  # noqa: BLE001 - reported once; its recordings still get an output
                models[leads] = error
                log(f"cannot load the model for leads {'-'.join(leads)}: {error}")
        if isinstance(models[leads], Exception):
            raise RuntimeError(f"no model for leads {'-'.join(leads)} ({models[leads]})")
        return models[leads]

    def fallback_model(leads):
        """The model whose classes and prior answer for a recording without a usable signal, if any loads."""
        for key in ([leads] if leads else []) + [TWELVE_LEADS]:
            try:
                return get_model(key)
            except RuntimeError:
                pass
        return next((m for m in models.values() if not isinstance(m, Exception)), None)

    def fail(path, error):
        if isinstance(error, RecordError) and error.path != "<string>":  # names the file it is about
            message = str(error)
        else:  # raised about header text given to run_model: name the header file
            message = f"{path}: {getattr(error, 'problem', error)}"
        failures.append((path, message))
        log(f"failed {message}")

    def write(path, recording_id, result, model=None):
        if result is None:
            # No usable output: the model's classes, all negative, with its training prevalence as probabilities
            # (or, for a model without them, the organizers' empty output).
            classes = list(getattr(model, "classes", None) or known_classes[0] or [])
            prior = getattr(model, "prior", None)
            probabilities = [float(p) for p in prior] if prior is not None and len(prior) == len(classes) \
                else [0.0] * len(classes)
            result = (classes, [0] * len(classes), probabilities)
        else:
            known_classes[0] = list(result[0])
        root = os.path.splitext(os.path.basename(path))[0]
        write_atomic(os.path.join(output_directory, root + ".csv"), output_csv(recording_id, *result))

    def flush():
        if not pending:
            return
        model = models[pending[0][2]]
        results = None
        if batch_run is not None and len(pending) > 1:
            try:
                results = [checked(r) for r in batch_run(model, [p[1].text for p in pending], [p[3] for p in pending])]
                if len(results) != len(pending):
                    raise ValueError(f"run_models returned {len(results)} results for {len(pending)} recordings")
            except Exception:  # noqa: BLE001 - fall back to one by one to find the culprit
                results = None
        for i, (path, header, _, recording) in enumerate(pending):
            result = results[i] if results is not None else None
            if result is None:
                try:
                    result = checked(team_code.run_model(model, header.text, recording))
                except Exception as error:  # noqa: BLE001 - one bad recording must not stop the run
                    fail(path, error)
            write(path, header.record_id, result, model)
        pending.clear()

    start = time.time()
    pending_samples = 0
    for path in tqdm(header_files, desc="Running model", unit="rec", disable=not progress, file=sys.stderr):
        header = leads = None
        try:
            header = read_header(path)
            leads = require_standard_leads(header)
            get_model(leads)
            recording = read_raw(recording_path(path), header, allow_non_finite=True)
        except Exception as error:  # noqa: BLE001
            fail(path, error)
            recording_id = header.record_id if header is not None else os.path.splitext(os.path.basename(path))[0]
            write(path, recording_id, None, fallback_model(leads))
            continue
        if pending and pending[0][2] != leads:
            flush()
            pending_samples = 0
        pending.append((path, header, leads, recording))
        pending_samples += recording.size
        if len(pending) >= batch_size or pending_samples >= max_batch_samples:
            flush()
            pending_samples = 0
    flush()
    return {
        "done": len(header_files) - len(failures),
        "failed": failures,
        "skipped": problems,
        "seconds": time.time() - start,
    }


def checked(result):
    """A run_model result as (class strings, int labels, float probabilities) of one length, so that writing it
    cannot fail; ValueError (or TypeError) otherwise, which the caller counts as that recording's failure."""
    classes, labels, probabilities = result
    if not len(classes) == len(labels) == len(probabilities):
        raise ValueError(f"run_model returned {len(classes)} classes, {len(labels)} labels and "
                         f"{len(probabilities)} probabilities")
    return [str(c) for c in classes], [int(v) for v in labels], [float(p) for p in probabilities]
