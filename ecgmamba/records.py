"""Reading Challenge records (WFDB header + MATLAB v4 .mat) robustly, in physical units.

Real Challenge headers vary between source databases; everything here tolerates the variants seen in the
public data and raises RecordError naming the file and the problem otherwise.

Headers are parsed here rather than with wfdb.rdheader: wfdb takes about 3.5 ms per header (88k headers would
cost five minutes), rejects record lines that name `E00001.mat`, and silently replaces a gain of 0 or an
unparsable gain by 200. The tests check that both parsers agree on well-formed headers.
"""

import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
import scipy.io

TWELVE_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
SIX_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF")
FOUR_LEADS = ("I", "II", "III", "V2")
THREE_LEADS = ("I", "II", "V2")
TWO_LEADS = ("I", "II")
LEAD_SETS = (TWELVE_LEADS, SIX_LEADS, FOUR_LEADS, THREE_LEADS, TWO_LEADS)


# Signal units we can convert to millivolts (matched case-insensitively; WFDB's default unit is mV).
MILLIVOLTS_PER_UNIT = {"mv": 1.0, "uv": 1e-3, "\u00b5v": 1e-3, "\u03bcv": 1e-3, "v": 1e3}

# WFDB gain field: `gain`, optionally `(baseline)`, optionally `/units`.
GAIN_FIELD = re.compile(r"^([^(/]*)(?:\(([^)]*)\))?(?:/(.*))?$")


class RecordError(ValueError):
    """A record that cannot be used. The message starts with the file path, then says what is wrong."""

    def __init__(self, path, problem):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

    def __reduce__(self):  # keeps the error picklable across DataLoader / joblib worker processes
        return type(self), (self.path, self.problem)


@dataclass(eq=False)
class Header:
    """One parsed WFDB header: gains are ADC units per unit (units[i], mV in all Challenge data) and
    physical = (digital - baseline) / gain. age is nan and sex None when unknown."""

    path: str
    record_id: str
    num_leads: int
    fs: float
    num_samples: int
    leads: tuple
    gains: np.ndarray
    baselines: np.ndarray
    units: tuple
    age: float
    sex: object  # "Male", "Female" or None
    labels: list
    text: str = field(repr=False)


def parse_labels(header_text):
    """SNOMED CT codes of the `#Dx:` comment(s), duplicates dropped, order kept.

    Accepts `#Dx: a,b`, `# Dx: a, b` and `#Dx:a`; a blank or missing Dx gives an empty list.
    """
    labels = []
    for line in header_text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            continue
        key, sep, value = stripped[1:].partition(":")
        if not sep or key.strip().lower() != "dx":
            continue
        for code in value.split(","):
            code = code.strip()
            if code and code not in labels:
                labels.append(code)
    return labels


def _comment_value(comments, key):
    """The last `#Key: value` comment for key (lowercase), or None."""
    value = None
    for name, text in comments:
        if name == key:
            value = text
    return value


def _parse_age(value):
    """Age in years; nan when missing or not a finite, non-negative number (e.g. `NaN`, `Unknown`)."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return age if math.isfinite(age) and age >= 0 else float("nan")


def _parse_sex(value):
    """`Male`/`Female` whatever the case (`M`/`F` too); None for unknown or missing."""
    if value is None:
        return None
    return {"male": "Male", "m": "Male", "female": "Female", "f": "Female"}.get(value.strip().lower())


def parse_header(text, path="<string>"):
    """Parse the text of a WFDB header into a Header; path only names the source in errors.

    Tolerates what occurs in the public data: a record line naming `E00001.mat`, a date and time after the
    number of samples, `1000.0(0)/mV` and `1000/mv` gains, comments with or without a space after `#`,
    Windows line endings and blank lines. Multi-segment records are not supported.
    """
    record_fields = None
    signal_lines = []  # (line number, fields)
    comments = []  # (lowercase key, value)
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, colon, value = line[1:].partition(":")
            if colon:
                comments.append((key.strip().lower(), value.strip()))
        elif record_fields is None:
            record_fields = line.split()
        else:
            signal_lines.append((number, line.split()))

    if record_fields is None:
        raise RecordError(path, "header is empty (no record line)")
    if len(record_fields) < 4:
        raise RecordError(path, f"record line {' '.join(record_fields)!r} needs a record name, number of leads, "
                                "sampling frequency and number of samples")
    record_id, num_leads, fs, num_samples = record_fields[:4]
    if "/" in record_id:
        raise RecordError(path, f"record {record_id!r} is a multi-segment record, which is not supported")
    if record_id.endswith(".mat"):
        record_id = record_id[:-4]
    try:
        num_leads = int(num_leads)
        num_samples = int(num_samples)
        fs = float(fs.split("/")[0])  # the frequency may read `fs/counter_freq(base_counter)`
    except ValueError:
        raise RecordError(path, f"record line {' '.join(record_fields)!r}: number of leads, sampling frequency "
                                "or number of samples is not a number") from None
    if num_leads < 1 or num_samples < 1 or not (math.isfinite(fs) and fs > 0):
        raise RecordError(path, f"record line {' '.join(record_fields)!r}: needs at least one lead, one sample "
                                "and a positive sampling frequency")
    if len(signal_lines) != num_leads:
        raise RecordError(path, f"record line declares {num_leads} leads but the header has "
                                f"{len(signal_lines)} signal lines")

    leads, gains, baselines, units = [], [], [], []
    for number, fields in signal_lines:
        if len(fields) < 9:
            raise RecordError(path, f"line {number}: a signal line needs 9 fields (file, format, gain, resolution, "
                                    f"zero, initial value, checksum, block size, lead name), found {len(fields)}")
        match = GAIN_FIELD.match(fields[2])
        try:
            gain = float(match.group(1)) if match else float("nan")
        except ValueError:
            gain = float("nan")
        if not math.isfinite(gain) or gain == 0:
            raise RecordError(path, f"line {number}: ADC gain {fields[2]!r} is not a non-zero number")
        baseline = match.group(2) if match.group(2) is not None else fields[4]  # WFDB: baseline defaults to adc_zero
        try:
            baseline = float(baseline)
        except ValueError:
            raise RecordError(path, f"line {number}: baseline {baseline!r} is not a number") from None
        unit = match.group(3) or "mV"
        if unit.lower() not in MILLIVOLTS_PER_UNIT:
            raise RecordError(path, f"line {number}: unknown signal units {unit!r}")
        leads.append(fields[-1])
        gains.append(gain)
        baselines.append(baseline)
        units.append(unit)

    return Header(
        path=str(path),
        record_id=record_id,
        num_leads=num_leads,
        fs=fs,
        num_samples=num_samples,
        leads=tuple(leads),
        gains=np.array(gains, dtype=np.float64),
        baselines=np.array(baselines, dtype=np.float64),
        units=tuple(units),
        age=_parse_age(_comment_value(comments, "age")),
        sex=_parse_sex(_comment_value(comments, "sex")),
        labels=parse_labels(text),
        text=text,
    )


def read_header(header_path):
    """Read and parse a .hea file. Bytes that are not UTF-8 become U+FFFD; line endings become `\\n`."""
    try:
        with open(header_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise RecordError(header_path, "header file does not exist") from None
    except OSError as e:
        raise RecordError(header_path, f"cannot read header file ({e.strerror or e})") from None
    if not data.strip():
        raise RecordError(header_path, "header file is empty")
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    return parse_header(text, header_path)


def recording_path(header_path):
    """The .mat file that belongs to a header: same directory and stem."""
    return os.path.splitext(header_path)[0] + ".mat"


def standard_leads(leads):
    """The standard twelve leads among `leads`, each once, in the standard order: the leads a model can use.

    A duplicated lead name counts once (select_leads reads its first row); names outside the twelve are dropped.
    """
    present = set(leads)
    return tuple(lead for lead in TWELVE_LEADS if lead in present)


def require_standard_leads(header):
    """standard_leads of a parsed header; RecordError naming its file when there is none."""
    leads = standard_leads(header.leads)
    if not leads:
        raise RecordError(header.path, f"none of the leads {list(header.leads)} is one of the twelve standard leads")
    return leads


def check_recording(raw, header, path=None, allow_non_finite=False):
    """Raise RecordError (naming path, default header.path) unless raw is a finite numeric leads x samples
    array matching the header.

    Non-finite samples (possible only in float .mat files) are an error by default: training leaves such a
    broken record out rather than learn from patched data. allow_non_finite=True (inference, which must answer
    for every record) accepts them, as preprocessing interpolates them, unless no sample at all is finite."""
    path = header.path if path is None else path
    expected = (header.num_leads, header.num_samples)
    if raw.ndim != 2:
        raise RecordError(path, f"signal has {raw.ndim} dimensions, expected leads x samples {expected}")
    if raw.shape != expected:
        if raw.shape == expected[::-1]:
            raise RecordError(path, f"signal is stored as samples x leads {raw.shape} (transposed); the header "
                                    f"says {header.num_leads} leads x {header.num_samples} samples")
        if raw.shape[0] != header.num_leads:
            raise RecordError(path, f"signal has {raw.shape[0]} leads, the header says {header.num_leads}")
        raise RecordError(path, f"signal has {raw.shape[1]} samples, the header says {header.num_samples}")
    if np.issubdtype(raw.dtype, np.floating):
        bad = np.count_nonzero(~np.isfinite(raw))
        if bad == raw.size:
            raise RecordError(path, "signal has no finite sample")
        if bad and not allow_non_finite:
            raise RecordError(path, f"signal has {bad} non-finite samples")
    elif not np.issubdtype(raw.dtype, np.integer):
        raise RecordError(path, f"signal has dtype {raw.dtype}, expected integers or floats")


def to_millivolts(raw, header, path=None, allow_non_finite=False):
    """A digital recording (leads x samples, as stored; e.g. what helper_code.load_recording returns) in
    float32 millivolts, after check_recording."""
    raw = np.asarray(raw)
    check_recording(raw, header, path, allow_non_finite)
    scale = np.array([MILLIVOLTS_PER_UNIT[unit.lower()] for unit in header.units]) / header.gains
    signal = raw.astype(np.float32)
    signal -= header.baselines.astype(np.float32)[:, None]
    signal *= scale.astype(np.float32)[:, None]
    return signal


def read_raw(mat_path, header, allow_non_finite=False):
    """The 'val' matrix of a .mat file exactly as stored (digital units, dtype kept), checked against header.

    Raises RecordError for a missing, empty, truncated or corrupt file, a missing 'val', a shape that does not
    match the header (transposed included) and non-finite samples (see check_recording).
    """
    try:
        mat = scipy.io.loadmat(mat_path, variable_names=("val",))
    except FileNotFoundError:
        raise RecordError(mat_path, "recording file does not exist") from None
    except Exception as e:  # scipy raises many types for empty, truncated or corrupt files
        raise RecordError(mat_path, f"cannot read MATLAB file ({type(e).__name__}: {e})") from None
    if "val" not in mat:
        try:
            names = [name for name, _, _ in scipy.io.whosmat(mat_path)]
        except Exception:
            names = []
        raise RecordError(mat_path, f"no 'val' matrix in the MATLAB file (it has: {', '.join(names) or 'nothing'})")
    raw = mat["val"]
    check_recording(raw, header, mat_path, allow_non_finite)
    return raw


def read_signal(mat_path, header):
    """The recording of a .mat file in millivolts, float32 (num_leads, num_samples); errors as read_raw."""
    return to_millivolts(read_raw(mat_path, header), header, mat_path)


def read_record(header_path):
    """Read a header and its .mat (same stem) -> (Header, float32 signal in mV, num_leads x num_samples)."""
    header = read_header(header_path)
    return header, read_signal(recording_path(header_path), header)


def select_leads(signal, have_leads, want_leads):
    """Rows of signal for want_leads, in that order; a lead not in have_leads is all zeros (as choose_leads)."""
    have_leads = list(have_leads)
    if len(signal) != len(have_leads):
        raise ValueError(f"signal has {len(signal)} leads but {len(have_leads)} lead names were given")
    selected = np.zeros((len(want_leads), signal.shape[1]), dtype=signal.dtype)
    for i, lead in enumerate(want_leads):
        if lead in have_leads:
            selected[i] = signal[have_leads.index(lead)]
    return selected


def find_records(directory, recursive=False, headers_without_recording=False):
    """Header paths of the records in directory, and what is wrong with the rest: (header_paths, problems).

    Same rule as helper_code.find_challenge_files (visible `X.hea` with `X.mat` beside it, sorted by file name),
    but a header without its .mat, or a .mat without its header, is listed in problems as `path: problem`
    instead of being dropped silently. recursive=True also walks sub-folders (the public 2021 training data
    unpacks into one folder per source database), visiting folders in sorted order.
    headers_without_recording=True lists a header whose .mat is missing with the others instead (inference
    answers for every header, as the evaluation expects an output for each).
    """
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        raise RecordError(directory, "data directory does not exist") from None
    except NotADirectoryError:
        raise RecordError(directory, "is not a directory") from None
    present = set(names)
    header_paths, problems = [], []
    for name in names:
        root, extension = os.path.splitext(name)
        path = os.path.join(directory, name)
        if recursive and not name.startswith(".") and os.path.isdir(path):
            sub_headers, sub_problems = find_records(path, True, headers_without_recording)
            header_paths += sub_headers
            problems += sub_problems
            continue
        if root.startswith(".") or extension not in (".hea", ".mat"):
            continue
        if extension == ".hea":
            if headers_without_recording or (root + ".mat" in present
                                             and os.path.isfile(os.path.join(directory, root + ".mat"))):
                header_paths.append(path)
            else:
                problems.append(f"{path}: header has no recording file {root}.mat")
        elif root + ".hea" not in present:
            problems.append(f"{path}: recording has no header file {root}.hea")
    return header_paths, problems
