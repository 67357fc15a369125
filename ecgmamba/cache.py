"""Preprocess a Challenge folder once into memory-mapped arrays, so epochs never re-parse 88k recordings.

Layout of the cache folder (WORK/cache, WORK being the training's work_directory, by default the model folder; the
training removes it after a successful run unless keep_work is set):

    meta.json      fingerprint, record ids, offsets/lengths, skipped files and why
    signals.npy    float16 (total_samples, 12): every record's preprocessed 12 leads back to back (absent leads 0);
                   with "record" scaling, in mV before scaling (see SignalCache.model_input)
    scales.npy     float32 (num_records, 12): each lead's robust standard deviation in mV
    labels.npy     bool (num_records, num_classes): scored classes, equivalent codes merged

The fingerprint covers the file names, sizes and modification times, the preprocessing parameters, the scoring
table and the source code of the modules that shape the content (CODE_MODULES), so a rerun on unchanged data and
code reuses the cache and any change rebuilds it. Records are processed in
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
from ecgmamba.preprocess import PreprocessConfig, filter_recording, resampled_length, scale_leads
from ecgmamba.records import (TWELVE_LEADS, RecordError, find_records, read_header, read_signal,
                              require_standard_leads, select_leads)
from ecgmamba.scoring import encode_labels

CACHE_VERSION = 3

# Unscaled ("record" scaling) samples are stored in mV as float16, whose largest finite value is 65504.
FLOAT16_LIMIT = 6.0e4

# Shorter recordings are left out of training: under a second holds no full heartbeat, and a window that is
# almost all padding would teach the record's labels from nothing. (Inference still answers for them.)
MIN_TRAINING_SECONDS = 1.0


# The modules whose code shapes what the cache holds: reading, preprocessing, label encoding, and this one. Their
# source goes into the fingerprint, so editing any of them rebuilds the cache instead of reusing stale content.
CODE_MODULES = ("ecgmamba.records", "ecgmamba.preprocess", "ecgmamba.scoring", "ecgmamba.cache")


def code_digest(modules=None):
    """SHA-256 over the source files of `modules` (default CODE_MODULES)."""
    import importlib

    digest = hashlib.sha256()
    for name in modules or CODE_MODULES:
        path = importlib.import_module(name).__file__
        with open(path, "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def fingerprint(header_files, preprocess, max_seconds, table):
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, code_digest(), preprocess.signal_dict(), max_seconds,
                              table.class_codes]).encode())
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
        self.scales = np.load(os.path.join(directory, "scales.npy"))
        self.preprocess = PreprocessConfig.from_dict(self.meta["preprocess"])
        self.offsets = np.asarray(self.meta["offsets"], dtype=np.int64)
        self.lengths = np.asarray(self.meta["lengths"], dtype=np.int64)
        self.record_ids = self.meta["record_ids"]

    def __len__(self):
        return len(self.record_ids)

    def signal(self, index):
        start = self.offsets[index]
        return self.signals[start:start + self.lengths[index]]

    def model_input(self, index, leads, present=None, start=0, length=None):
        """Record `index`'s samples [start, start + length) of `leads` as float32 (len(leads), n), as
        preprocess_recording gives them for a record that has only the `present` leads (bool per lead; None:
        all): the others zeroed and, with "record" scaling, the record's scale taken from the present leads."""
        rows = [TWELVE_LEADS.index(lead) for lead in leads]
        stop = self.lengths[index] if length is None else min(start + length, self.lengths[index])
        x = np.asarray(self.signal(index)[start:stop, rows], dtype=np.float32).T
        if present is not None:
            x = x * np.asarray(present, dtype=np.float32)[:, None]
        if self.preprocess.scaling == "record":
            x = scale_leads(x, self.scales[index, rows], self.preprocess, present)
        return np.ascontiguousarray(x)


def _process_chunk(items, signals_path, preprocess, max_samples):
    """Worker: preprocess records and write them into the shared memory maps. Returns (count, {index: error})."""
    signals = np.load(signals_path, mmap_mode="r+")
    scales = np.load(os.path.join(os.path.dirname(signals_path), "scales_plan.npy"), mmap_mode="r+")
    errors = {}
    for index, path, offset, length in items:
        try:
            header = read_header(path)
            signal = read_signal(os.path.splitext(path)[0] + ".mat", header)
            signal = select_leads(signal, header.leads, TWELVE_LEADS)
            # Trim the raw record first so a 30-minute Holter record costs no more than max_samples of work.
            keep_raw = int(np.ceil(max_samples * header.fs / preprocess.target_fs)) + 1
            filtered, lead_scales = filter_recording(signal[:, :keep_raw], header.fs, preprocess)
            if preprocess.scaling == "record":  # scaled when read, by the leads a training sample keeps
                processed = np.clip(filtered[:, :length], -FLOAT16_LIMIT, FLOAT16_LIMIT)
            else:
                processed = scale_leads(filtered[:, :length], lead_scales, preprocess)
            signals[offset:offset + processed.shape[1]] = processed.T.astype(np.float16)
            scales[index] = lead_scales
        except Exception as error:  # noqa: BLE001 - reported per record, the build goes on
            errors[index] = str(error) if isinstance(error, RecordError) else f"{path}: {error}"
    signals.flush()
    scales.flush()
    return len(items), errors


def _valid_cache(cache_directory, key):
    """The cache's meta if it exists and carries `key`, else None."""
    try:
        with open(os.path.join(cache_directory, "meta.json")) as f:
            meta = json.load(f)
        return meta if meta.get("fingerprint") == key else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or unreadable meta: rebuild


def _plan(header_files, problems, cache_directory, preprocess, max_seconds, key, log):
    """Read every header, lay out the memory map, and write plan.json: the work every rank then shares."""
    os.makedirs(cache_directory, exist_ok=True)
    meta_path = os.path.join(cache_directory, "meta.json")
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
    signals = np.lib.format.open_memmap(os.path.join(cache_directory, "signals.npy"), mode="w+", dtype=np.float16,
                                        shape=(max(int(sum(lengths)), 1), len(TWELVE_LEADS)))
    del signals
    np.lib.format.open_memmap(os.path.join(cache_directory, "scales_plan.npy"), mode="w+", dtype=np.float32,
                              shape=(max(len(headers), 1), len(TWELVE_LEADS)))
    save_json(os.path.join(cache_directory, "plan.json"), {
        "fingerprint": key, "max_samples": max_samples, "skipped": skipped,
        "items": [[i, path, int(offsets[i]), int(lengths[i])] for i, (path, _) in enumerate(headers)],
        "record_ids": [h.record_id for _, h in headers], "labels": [list(h.labels) for _, h in headers]})


def _fill(cache_directory, preprocess, rank, world, workers, progress):
    """Preprocess this rank's share of the plan into the memory map; writes errors_<rank>.json."""
    with open(os.path.join(cache_directory, "plan.json")) as f:
        plan = json.load(f)
    items = plan["items"][rank::world]
    signals_path = os.path.join(cache_directory, "signals.npy")
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(64, len(items) // (8 * workers) or 1))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    errors = {}
    parallel = Parallel(n_jobs=workers, return_as="generator_unordered")
    with tqdm(total=len(items), desc="Caching", unit="rec", disable=not progress, file=sys.stderr) as bar:
        for count, chunk_errors in parallel(
                delayed(_process_chunk)(c, signals_path, preprocess, plan["max_samples"]) for c in chunks):
            errors.update(chunk_errors)
            bar.update(count)
    save_json(os.path.join(cache_directory, f"errors_{rank}.json"),
              {"records": len(items), "errors": {str(k): v for k, v in errors.items()}})


def _finish(cache_directory, preprocess, table, world, log):
    """Merge the ranks' errors, write labels.npy and, last, meta.json (which makes the cache valid)."""
    with open(os.path.join(cache_directory, "plan.json")) as f:
        plan = json.load(f)
    errors, per_rank = {}, []
    for rank in range(world):
        path = os.path.join(cache_directory, f"errors_{rank}.json")
        with open(path) as f:
            part = json.load(f)
        errors.update({int(k): v for k, v in part["errors"].items()})
        per_rank.append(part["records"])
        os.remove(path)
    skipped = list(plan["skipped"])
    for index in sorted(errors):
        log(f"skipped {errors[index]}")
        skipped.append(errors[index])
    items = plan["items"]
    good = [i for i in range(len(items)) if i not in errors]
    labels = encode_labels([plan["labels"][i] for i in good], table)
    np.save(os.path.join(cache_directory, "labels.npy"), labels)
    scales = np.load(os.path.join(cache_directory, "scales_plan.npy"))
    np.save(os.path.join(cache_directory, "scales.npy"), scales[good] if good else np.zeros((0, len(TWELVE_LEADS))))
    os.remove(os.path.join(cache_directory, "scales_plan.npy"))
    save_json(os.path.join(cache_directory, "meta.json"), {
        "fingerprint": plan["fingerprint"],
        "version": CACHE_VERSION,
        "record_ids": [plan["record_ids"][i] for i in good],
        "files": [items[i][1] for i in good],
        "offsets": [items[i][2] for i in good],
        "lengths": [items[i][3] for i in good],
        "classes": table.class_codes,
        "preprocess": preprocess.to_dict(),
        "skipped": skipped,
        "built_per_rank": per_rank,
    })
    os.remove(os.path.join(cache_directory, "plan.json"))


def build_cache(data_directory, cache_directory, preprocess=PreprocessConfig(), table=None, max_seconds=60.0,
                workers=None, progress=True, log=None, rank=0, world=1, barrier=None):
    """Build (or reuse) the cache for `data_directory`; returns a SignalCache of the usable records.

    Under DDP every rank calls this with its rank, the world size and a barrier: rank 0 reads the headers and lays
    out the memory map, each rank preprocesses every world-th record into it (so the build takes 1/world of the
    time and no rank idles at a barrier for the whole build), and rank 0 writes the labels and the meta last. The
    cache folder must be on a file system all ranks see (one machine, or a shared disk).
    """
    from ecgmamba.scoring import load_scoring

    log = log or (lambda message: print(message, file=sys.stderr))
    barrier = barrier or (lambda: None)
    table = table or load_scoring("2021")
    header_files, problems = find_records(data_directory, recursive=True)
    if not header_files:
        raise RecordError(data_directory, "no recordings (.hea with .mat) found")
    key = fingerprint(header_files, preprocess, max_seconds, table)
    meta = _valid_cache(cache_directory, key) if rank == 0 else None
    if rank == 0:
        for problem in problems:
            log(f"skipped {problem}")
        if meta is not None:
            for problem in meta["skipped"]:  # the same warnings as when the cache was built
                if problem not in problems:
                    log(f"skipped {problem}")
        else:
            _plan(header_files, problems, cache_directory, preprocess, max_seconds, key, log)
    barrier()
    if _valid_cache(cache_directory, key) is not None:  # rank 0 removed an old meta before this barrier
        return SignalCache(cache_directory)
    _fill(cache_directory, preprocess, rank, world, workers, progress and rank == 0)
    barrier()
    if rank == 0:
        _finish(cache_directory, preprocess, table, world, log)
    barrier()
    return SignalCache(cache_directory)
