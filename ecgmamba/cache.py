"""Preprocess a Challenge folder once into memory-mapped arrays, so epochs never re-parse 88k recordings.

Layout of the cache folder (inside the model folder):

    meta.json      fingerprint, record ids, offsets/lengths, skipped files and why
    signals.npy    float16 (total_samples, 12): every record's preprocessed 12 leads back to back (absent leads 0)
    labels.npy     bool (num_records, num_classes): scored classes, equivalent codes merged

The fingerprint covers the file names, sizes and modification times, the preprocessing parameters and the
scoring table, so a rerun on unchanged data reuses the cache and any change rebuilds it. Records are processed in
parallel (joblib) and written straight into the memory map by the workers.
"""

import hashlib
import json
import os
import sys

import numpy as np
from joblib import Parallel, delayed
from tqdm import tqdm

from ecgmamba.checkpoint import save_json
from ecgmamba.preprocess import PreprocessConfig, preprocess_recording, resampled_length
from ecgmamba.records import (TWELVE_LEADS, RecordError, find_records, read_header, read_signal,
                              require_standard_leads, select_leads)
from ecgmamba.scoring import encode_labels

CACHE_VERSION = 2

# Shorter recordings are left out of training: under a second holds no full heartbeat, and a window that is
# almost all padding would teach the record's labels from nothing. (Inference still answers for them.)
MIN_TRAINING_SECONDS = 1.0


def fingerprint(header_files, preprocess, max_seconds, table):
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, preprocess.to_dict(), max_seconds, table.class_codes]).encode())
    for path in header_files:
        for file in (path, os.path.splitext(path)[0] + ".mat"):
            try:
                stat = os.stat(file)
                digest.update(f"{os.path.basename(file)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
            except OSError:
                digest.update(f"{os.path.basename(file)}:missing;".encode())
    return digest.hexdigest()


class SignalCache:
    """Read-only view of a built cache: `signal(i)` is record i's (samples, 12) float16 memory-mapped slice."""

    def __init__(self, directory):
        with open(os.path.join(directory, "meta.json")) as f:
            self.meta = json.load(f)
        self.directory = directory
        self.signals = np.load(os.path.join(directory, "signals.npy"), mmap_mode="r")
        self.labels = np.load(os.path.join(directory, "labels.npy"))
        self.offsets = np.asarray(self.meta["offsets"], dtype=np.int64)
        self.lengths = np.asarray(self.meta["lengths"], dtype=np.int64)
        self.record_ids = self.meta["record_ids"]

    def __len__(self):
        return len(self.record_ids)

    def signal(self, index):
        start = self.offsets[index]
        return self.signals[start:start + self.lengths[index]]


def _process_chunk(items, signals_path, preprocess, max_samples):
    """Worker: preprocess records and write them into the shared memory map. Returns (count, {index: error})."""
    signals = np.load(signals_path, mmap_mode="r+")
    errors = {}
    for index, path, offset, length in items:
        try:
            header = read_header(path)
            signal = read_signal(os.path.splitext(path)[0] + ".mat", header)
            signal = select_leads(signal, header.leads, TWELVE_LEADS)
            # Trim the raw record first so a 30-minute Holter record costs no more than max_samples of work.
            keep_raw = int(np.ceil(max_samples * header.fs / preprocess.target_fs)) + 1
            processed = preprocess_recording(signal[:, :keep_raw], header.fs, preprocess)[:, :length]
            signals[offset:offset + processed.shape[1]] = processed.T.astype(np.float16)
        except Exception as error:  # noqa: BLE001 - reported per record, the build goes on
            errors[index] = str(error) if isinstance(error, RecordError) else f"{path}: {error}"
    signals.flush()
    return len(items), errors


def build_cache(data_directory, cache_directory, preprocess=PreprocessConfig(), table=None, max_seconds=60.0,
                workers=None, progress=True, log=None):
    """Build (or reuse) the cache for `data_directory`; returns a SignalCache of the usable records."""
    from ecgmamba.scoring import load_scoring

    log = log or (lambda message: print(message, file=sys.stderr))
    table = table or load_scoring("2021")
    header_files, problems = find_records(data_directory, recursive=True)
    for problem in problems:
        log(f"skipped {problem}")
    if not header_files:
        raise RecordError(data_directory, "no recordings (.hea with .mat) found")
    key = fingerprint(header_files, preprocess, max_seconds, table)
    meta_path = os.path.join(cache_directory, "meta.json")
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get("fingerprint") == key:
                for problem in meta["skipped"]:  # the same warnings as when the cache was built
                    if problem not in problems:
                        log(f"skipped {problem}")
                return SignalCache(cache_directory)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # unreadable meta: rebuild

    os.makedirs(cache_directory, exist_ok=True)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # an interrupted rebuild must never look valid
    max_samples = max(int(max_seconds * preprocess.target_fs), preprocess.window_samples)
    headers, skipped = [], list(problems)
    for path in header_files:
        try:
            header = read_header(path)
            require_standard_leads(header)
            if header.num_samples < MIN_TRAINING_SECONDS * header.fs:
                raise RecordError(path, f"recording lasts {header.num_samples / header.fs:.3g} s; training needs "
                                        f"at least {MIN_TRAINING_SECONDS:g} s")
            headers.append((path, header))
        except RecordError as error:
            skipped.append(str(error))
            log(f"skipped {error}")
    lengths = [min(resampled_length(h.num_samples, h.fs, preprocess.target_fs), max_samples) for _, h in headers]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lengths else np.zeros(0, np.int64)
    signals_path = os.path.join(cache_directory, "signals.npy")
    signals = np.lib.format.open_memmap(signals_path, mode="w+", dtype=np.float16,
                                        shape=(max(int(sum(lengths)), 1), len(TWELVE_LEADS)))
    del signals

    items = [(i, path, int(offsets[i]), lengths[i]) for i, (path, _) in enumerate(headers)]
    chunk = max(1, min(64, len(items) // (8 * (workers or os.cpu_count() or 1)) or 1))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    errors = {}
    parallel = Parallel(n_jobs=workers or os.cpu_count() or 1, return_as="generator_unordered")
    with tqdm(total=len(items), desc="Caching", unit="rec", disable=not progress, file=sys.stderr) as bar:
        for count, chunk_errors in parallel(
                delayed(_process_chunk)(c, signals_path, preprocess, max_samples) for c in chunks):
            errors.update(chunk_errors)
            bar.update(count)
    for index in sorted(errors):
        log(f"skipped {errors[index]}")
        skipped.append(errors[index])

    good = [i for i in range(len(headers)) if i not in errors]
    labels = encode_labels([headers[i][1].labels for i in good], table)
    np.save(os.path.join(cache_directory, "labels.npy"), labels)
    save_json(meta_path, {
        "fingerprint": key,
        "version": CACHE_VERSION,
        "record_ids": [headers[i][1].record_id for i in good],
        "files": [headers[i][0] for i in good],
        "offsets": [int(offsets[i]) for i in good],
        "lengths": [int(lengths[i]) for i in good],
        "classes": table.class_codes,
        "preprocess": preprocess.to_dict(),
        "skipped": skipped,
    })
    return SignalCache(cache_directory)
