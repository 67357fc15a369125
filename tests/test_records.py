"""Reading real Challenge records: every header variant in the public data loads, every broken file is named."""

import contextlib
import math
import pickle

import numpy as np
import pytest
import scipy.io

import helper_code
from ecgmamba import records
from ecgmamba.records import TWELVE_LEADS, RecordError

COMMENTS = ["#Age: 74", "#Sex: Male", "#Dx: 426783006,164889003", "#Rx: Unknown", "#Hx: Unknown", "#Sx: Unknown"]


def header_text(name="A0001", num_samples=20, fs="500", leads=TWELVE_LEADS, gain="1000/mV", zero=0, fmt="16+24",
                comments=COMMENTS, record_line=None):
    record_line = record_line or f"{name} {len(leads)} {fs} {num_samples}"
    signal_lines = [f"{name}.mat {fmt} {gain} 16 {zero} 0 0 0 {lead}" for lead in leads]
    return "\n".join([record_line] + signal_lines + list(comments)) + "\n"


def write_record(directory, text, val, name="A0001"):
    """Write name.hea (str or bytes) and, unless val is None, name.mat; return the header path."""
    header_path = directory / f"{name}.hea"
    if isinstance(text, bytes):
        header_path.write_bytes(text)
    else:
        header_path.write_text(text)
    if val is not None:
        scipy.io.savemat(str(directory / f"{name}.mat"), {"val": val}, format="4")
    return str(header_path)


def ramp(num_leads=12, num_samples=20, scale=1):
    """Distinct int16 values per lead and sample, so a wrong lead or transposition shows."""
    return (np.arange(num_leads * num_samples).reshape(num_leads, num_samples) * scale - 100).astype(np.int16)


@contextlib.contextmanager
def raises_record_error(path, *words):
    """Expect a RecordError whose message starts with path and contains all words."""
    with pytest.raises(RecordError) as error:
        yield error
    message = str(error.value)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, message


# --- header variants from the public data ---

def test_basic_header_fields():
    header = records.parse_header(header_text(), "A0001.hea")
    assert header.path == "A0001.hea" and header.record_id == "A0001"
    assert (header.num_leads, header.fs, header.num_samples) == (12, 500.0, 20)
    assert type(header.num_leads) is int and type(header.fs) is float and type(header.num_samples) is int
    assert header.leads == TWELVE_LEADS and header.units == ("mV",) * 12
    assert header.gains.dtype == np.float64 and header.gains.tolist() == [1000.0] * 12
    assert header.baselines.dtype == np.float64 and header.baselines.tolist() == [0.0] * 12
    assert (header.age, header.sex, header.labels) == (74.0, "Male", ["426783006", "164889003"])
    assert header.text == header_text()


@pytest.mark.parametrize("comment, age", [("#Age: 74", 74.0), ("# Age: 74", 74.0), ("#Age:61", 61.0),
                                          ("#Age: 45.5", 45.5)])
def test_age_variants(comment, age):
    assert records.parse_header(header_text(comments=[comment])).age == age


@pytest.mark.parametrize("comments", [["#Age: NaN"], ["#Age: Unknown"], ["#Age: "], ["#Age: -1"], []])
def test_unknown_age_is_nan(comments):
    assert math.isnan(records.parse_header(header_text(comments=comments)).age)


@pytest.mark.parametrize("comment, sex", [("#Sex: Male", "Male"), ("#Sex: female", "Female"), ("#Sex: FEMALE", "Female"),
                                          ("# Sex: M", "Male"), ("#Sex: F", "Female"), ("#Sex: Unknown", None),
                                          ("#Sex: ", None)])
def test_sex_variants(comment, sex):
    assert records.parse_header(header_text(comments=[comment])).sex == sex
    assert records.parse_header(header_text(comments=[])).sex is None


def test_duplicated_and_blank_dx():
    assert records.parse_header(header_text(comments=["#Dx: 1,2,1, 2"])).labels == ["1", "2"]
    assert records.parse_header(header_text(comments=["#Dx: "])).labels == []
    assert records.parse_header(header_text(comments=["#Dx:"])).labels == []
    assert records.parse_header(header_text(comments=[])).labels == []


@pytest.mark.parametrize("gain, zero, expected_gain, expected_baseline, unit", [
    ("1000/mV", 0, 1000.0, 0.0, "mV"),
    ("1000/mv", 0, 1000.0, 0.0, "mv"),
    ("1000.0(0)/mV", 0, 1000.0, 0.0, "mV"),
    ("1000.0(0)/mV", 7, 1000.0, 0.0, "mV"),  # the parenthesised baseline wins over adc_zero
    ("1000(-12)/mV", 0, 1000.0, -12.0, "mV"),
    ("1000/mV", 7, 1000.0, 7.0, "mV"),  # no parentheses: baseline = adc_zero
    ("4880/mV", 0, 4880.0, 0.0, "mV"),
    ("200/mV", 0, 200.0, 0.0, "mV"),
    ("200", 0, 200.0, 0.0, "mV"),  # WFDB default units
])
def test_gain_field_variants_and_millivolts(tmp_path, gain, zero, expected_gain, expected_baseline, unit):
    val = ramp()
    header_path = write_record(tmp_path, header_text(gain=gain, zero=zero), val)
    header, signal = records.read_record(header_path)
    assert header.gains.tolist() == [expected_gain] * 12
    assert header.baselines.tolist() == [expected_baseline] * 12
    assert header.units == (unit,) * 12
    assert signal.dtype == np.float32 and signal.shape == (12, 20)
    np.testing.assert_allclose(signal, (val - expected_baseline) / expected_gain, rtol=1e-6)


@pytest.mark.parametrize("variant", [
    dict(gain="1000/mv"), dict(gain="1000.0(0)/mV", zero=7), dict(gain="1000(-12)/mV"), dict(gain="1000/mV", zero=7),
    dict(gain="4880/mV"), dict(gain="200/mV"), dict(gain="200"), dict(fs="257"), dict(fs="1000"), dict(fmt="16"),
    dict(fmt="16x1+24"),
], ids=lambda v: ",".join(f"{k}={v}" for k, v in v.items()))
def test_header_variants_agree_with_wfdb(tmp_path, variant):
    wfdb = pytest.importorskip("wfdb")
    header_path = write_record(tmp_path, header_text(**variant), ramp())
    header = records.read_header(header_path)
    reference = wfdb.rdheader(header_path[:-4])
    assert (header.fs, header.num_samples, list(header.leads), list(header.units)) == (
        reference.fs, reference.sig_len, reference.sig_name, reference.units)
    assert header.gains.tolist() == reference.adc_gain and header.baselines.tolist() == reference.baseline


def test_microvolt_units_are_converted_and_unknown_units_rejected(tmp_path):
    header_path = write_record(tmp_path, header_text(gain="1/uV"), ramp())
    _, signal = records.read_record(header_path)
    np.testing.assert_allclose(signal, ramp() / 1000.0, rtol=1e-6)
    with raises_record_error("<string>", "units", "mmHg"):
        records.parse_header(header_text(gain="100/mmHg"))


def test_per_lead_gains_and_baselines(tmp_path):
    lines = ["A0001 2 500 3",
             "A0001.mat 16+24 4880(10)/mV 16 0 0 0 0 I",
             "A0001.mat 16+24 200/mV 16 -4 0 0 0 II"]
    val = np.array([[10, 4890, -4870], [-4, 196, -204]], dtype=np.int16)
    _, signal = records.read_record(write_record(tmp_path, "\n".join(lines) + "\n", val))
    np.testing.assert_allclose(signal, [[0, 1, -1], [0, 1, -1]], atol=1e-6)


def test_record_line_naming_mat_file_and_date_time():
    assert records.parse_header(header_text(record_line="E00001.mat 12 500 20")).record_id == "E00001"
    header = records.parse_header(header_text(record_line="A0001 12 500 7500 05-Feb-2020 11:39:16"))
    assert (header.record_id, header.fs, header.num_samples) == ("A0001", 500.0, 7500)


@pytest.mark.parametrize("fs", ["257", "500", "1000", "500/1000(0)"])
def test_sampling_rates(fs):
    assert records.parse_header(header_text(fs=fs)).fs == float(fs.split("/")[0])


@pytest.mark.parametrize("fmt", ["16", "16x1+24", "16+24"])
def test_signal_formats(tmp_path, fmt):
    _, signal = records.read_record(write_record(tmp_path, header_text(fmt=fmt), ramp()))
    assert signal.shape == (12, 20)


def test_half_hour_incart_length(tmp_path):
    num_samples = 462600  # INCART: 30 min at 257 Hz
    val = np.zeros((12, num_samples), dtype=np.int16)
    val[:, -1] = 2000
    header, signal = records.read_record(
        write_record(tmp_path, header_text(name="I0001", fs="257", num_samples=num_samples), val, name="I0001"))
    assert (header.fs, header.num_samples) == (257.0, num_samples)
    assert signal.shape == (12, num_samples) and signal[:, -1].tolist() == [2.0] * 12


def test_windows_line_endings_trailing_blanks_and_bad_bytes(tmp_path):
    text = header_text(comments=["#Age: 74", "#Sex: female", "#Dx: 426783006", "#Hx: caf\xe9"])
    data = (text.replace("\n", "\r\n") + "\r\n\r\n   \r\n").encode("latin-1")
    header, signal = records.read_record(write_record(tmp_path, data, ramp()))
    assert header.leads == TWELVE_LEADS  # no stray '\r' on the last field
    assert (header.age, header.sex, header.labels) == (74.0, "Female", ["426783006"])
    assert "\r" not in header.text and "caf\ufffd" in header.text
    assert signal.shape == (12, 20)


def test_reduced_lead_header(tmp_path):
    leads = ("I", "II", "V2")
    header, signal = records.read_record(write_record(tmp_path, header_text(leads=leads), ramp(3)))
    assert header.leads == leads and header.num_leads == 3 and signal.shape == (3, 20)


# --- errors: each names the file and the problem ---

def test_missing_and_empty_header(tmp_path):
    missing = tmp_path / "nothing.hea"
    with raises_record_error(missing, "does not exist"):
        records.read_header(str(missing))
    empty = tmp_path / "empty.hea"
    empty.write_text("\n  \n")
    with raises_record_error(empty, "empty"):
        records.read_header(str(empty))
    with raises_record_error("x.hea", "empty"):
        records.parse_header("#Dx: 1\n", "x.hea")


@pytest.mark.parametrize("text, words", [
    ("A0001 12 500\n", ["record line", "number of samples"]),
    ("A0001 twelve 500 5000\n", ["not a number"]),
    ("A0001 0 500 5000\n", ["at least one lead"]),
    ("A0001 12 0 5000\n", ["positive sampling frequency"]),
    ("A0001/2 12 500 5000\n", ["multi-segment"]),
    (header_text(leads=TWELVE_LEADS[:11], record_line="A0001 12 500 20"), ["declares 12 leads", "11 signal lines"]),
    (header_text(leads=("I", "II", "III"), record_line="A0001 2 500 20"), ["declares 2 leads", "3 signal lines"]),
    ("A0001 1 500 20\nA0001.mat 16 1000/mV 16 0 I\n", ["line 2", "9 fields", "found 6"]),
    (header_text(gain="0/mV"), ["line 2", "gain '0/mV'"]),
    (header_text(gain="0.0(0)/mV"), ["gain '0.0(0)/mV'"]),
    (header_text(gain="abc/mV"), ["gain 'abc/mV'"]),
    (header_text(gain="nan/mV"), ["gain 'nan/mV'"]),
    (header_text(gain="1000(x)/mV"), ["baseline 'x'"]),
    (header_text(zero="z"), ["baseline 'z'"]),
])
def test_bad_headers(tmp_path, text, words):
    path = write_record(tmp_path, text, None)
    with raises_record_error(path, *words):
        records.read_header(path)


def test_missing_mat(tmp_path):
    header_path = write_record(tmp_path, header_text(), None)
    with raises_record_error(tmp_path / "A0001.mat", "does not exist"):
        records.read_record(header_path)


@pytest.mark.parametrize("content", [b"", b"MATLAB", b"hello, this is not a MATLAB file at all" * 3])
def test_empty_or_corrupt_mat(tmp_path, content):
    header_path = write_record(tmp_path, header_text(), None)
    (tmp_path / "A0001.mat").write_bytes(content)
    with raises_record_error(tmp_path / "A0001.mat", "cannot read MATLAB file"):
        records.read_record(header_path)


def test_truncated_mat(tmp_path):
    header_path = write_record(tmp_path, header_text(), ramp())
    mat = tmp_path / "A0001.mat"
    mat.write_bytes(mat.read_bytes()[:300])
    with raises_record_error(mat, "cannot read MATLAB file"):
        records.read_record(header_path)


def test_mat_without_val(tmp_path):
    header_path = write_record(tmp_path, header_text(), None)
    scipy.io.savemat(str(tmp_path / "A0001.mat"), {"signal": ramp()}, format="4")
    with raises_record_error(tmp_path / "A0001.mat", "no 'val'", "signal"):
        records.read_record(header_path)


@pytest.mark.parametrize("val, words", [
    (ramp().T.copy(), ["samples x leads", "transposed"]),
    (ramp(11), ["11 leads", "header says 12"]),
    (ramp(12, 19), ["19 samples", "header says 20"]),
])
def test_shape_mismatches(tmp_path, val, words):
    header_path = write_record(tmp_path, header_text(), val)
    with raises_record_error(tmp_path / "A0001.mat", *words):
        records.read_record(header_path)


def test_non_finite_samples_raise(tmp_path):
    val = ramp().astype(np.float64)
    val[3, 5] = np.nan
    val[4, 6] = np.inf
    header_path = write_record(tmp_path, header_text(), val)
    with raises_record_error(tmp_path / "A0001.mat", "2 non-finite samples"):
        records.read_record(header_path)


def test_float_mat_without_problems_is_read(tmp_path):
    val = ramp().astype(np.float64)
    _, signal = records.read_record(write_record(tmp_path, header_text(), val))
    np.testing.assert_allclose(signal, val / 1000.0, rtol=1e-6)


def test_record_error_is_value_error_and_picklable():
    error = RecordError("/data/A0001.mat", "signal has 11 leads")
    assert isinstance(error, ValueError)
    assert str(error) == "/data/A0001.mat: signal has 11 leads"
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.path, copy.problem) == (str(error), error.path, error.problem)


def test_to_millivolts_on_in_memory_recording():
    header = records.parse_header(header_text(gain="1000(5)/mV"), "A0001.hea")
    np.testing.assert_allclose(records.to_millivolts(ramp(), header), (ramp() - 5) / 1000.0, rtol=1e-6)
    with raises_record_error("A0001.hea", "3 dimensions"):
        records.to_millivolts(np.zeros((12, 20, 1)), header)


def test_read_raw_keeps_stored_values_and_checks_them(tmp_path):
    header_path = write_record(tmp_path, header_text(gain="1000(5)/mV"), ramp())
    header = records.read_header(header_path)
    raw = records.read_raw(str(tmp_path / "A0001.mat"), header)
    assert raw.dtype == np.int16 and np.array_equal(raw, ramp())
    assert np.array_equal(raw, helper_code.load_recording(str(tmp_path / "A0001.mat")))
    write_record(tmp_path, header_text(), ramp(11))
    with raises_record_error(tmp_path / "A0001.mat", "11 leads"):
        records.read_raw(str(tmp_path / "A0001.mat"), header)


# --- leads and directories ---

def test_select_leads():
    signal = np.arange(6, dtype=np.float32).reshape(3, 2)
    selected = records.select_leads(signal, ("I", "II", "V2"), ("V2", "aVR", "I"))
    assert selected.dtype == np.float32 and selected.tolist() == [[4, 5], [0, 0], [0, 1]]
    with pytest.raises(ValueError, match="3 leads but 2 lead names"):
        records.select_leads(signal, ("I", "II"), ("I",))


def test_find_records_reports_unpaired_files(tmp_path):
    for name in ["B.hea", "B.mat", "A.hea", "A.mat", "C.hea", "D.mat", ".E.hea", ".E.mat", "notes.txt"]:
        (tmp_path / name).write_text("x")
    header_paths, problems = records.find_records(str(tmp_path))
    assert header_paths == [str(tmp_path / "A.hea"), str(tmp_path / "B.hea")]
    assert problems == [f"{tmp_path / 'C.hea'}: header has no recording file C.mat",
                        f"{tmp_path / 'D.mat'}: recording has no header file D.hea"]
    with raises_record_error(tmp_path / "missing", "does not exist"):
        records.find_records(str(tmp_path / "missing"))


def test_find_records_recursive_walks_source_folders(tmp_path):
    for name in ["cpsc/A1.hea", "cpsc/A1.mat", "georgia/g1/E1.hea", "georgia/g1/E1.mat", "top.hea", "top.mat",
                 "georgia/g1/E2.hea", ".hidden/X.hea", ".hidden/X.mat"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    flat, _ = records.find_records(str(tmp_path))
    assert flat == [str(tmp_path / "top.hea")]
    nested, problems = records.find_records(str(tmp_path), recursive=True)
    assert nested == [str(tmp_path / "cpsc/A1.hea"), str(tmp_path / "georgia/g1/E1.hea"), str(tmp_path / "top.hea")]
    assert problems == [f"{tmp_path / 'georgia/g1/E2.hea'}: header has no recording file E2.mat"]


# --- the 50 real sample records ---

def test_sample_records(sample_dir):
    header_paths, problems = records.find_records(str(sample_dir))
    assert len(header_paths) == 50 and problems == []
    assert header_paths == helper_code.find_challenge_files(str(sample_dir))[0]
    for header_path in header_paths:
        header, signal = records.read_record(header_path)
        text = helper_code.load_header(header_path)
        assert signal.shape == (12, 5000) and signal.dtype == np.float32, header_path
        assert (header.fs, header.num_samples, header.leads) == (500.0, 5000, TWELVE_LEADS)
        assert header.gains.tolist() == [1000.0] * 12 and header.baselines.tolist() == [0.0] * 12
        assert header.labels == list(dict.fromkeys(helper_code.get_labels(text)))
        assert header.record_id == helper_code.get_recording_id(text)
        assert header.sex == helper_code.get_sex(text)
        assert header.age == helper_code.get_age(text) or math.isnan(header.age)
        assert 0.01 < np.median(np.abs(signal)) < 5, header_path
        # Each signal line's initial-value field is the lead's first sample: ties header to .mat row by row.
        initial_values = [int(line.split()[5]) for line in text.splitlines()[1:13]]
        np.testing.assert_allclose(signal[:, 0] * 1000, initial_values, atol=1e-3)


def test_sample_records_agree_with_wfdb(sample_dir):
    wfdb = pytest.importorskip("wfdb")
    for header_path in sorted(sample_dir.glob("*.hea"))[::5]:
        header, signal = records.read_record(str(header_path))
        reference = wfdb.rdrecord(str(header_path)[:-4])
        assert (header.record_id, header.num_leads, header.fs, header.num_samples) == (
            reference.record_name, reference.n_sig, reference.fs, reference.sig_len)
        assert list(header.leads) == reference.sig_name and list(header.units) == reference.units
        assert header.gains.tolist() == reference.adc_gain and header.baselines.tolist() == reference.baseline
        np.testing.assert_allclose(signal, reference.p_signal.T, atol=1e-5)
