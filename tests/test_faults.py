"""Nothing lost on bad input: a corpus of broken and unusual records through the organizers' commands.

The corpus is built here, once per module, from the synthetic generator plus small edits; the tiny model is trained
on it once. docs/FAULTS.md is the table of what each entry point does with each fault; these tests check that table:
which recordings are classified, which get the model's prior, which message names them, what training skips, what
evaluate_model.py does with bad output files, that a damaged or half-saved model folder is refused with its file
named, that inference on a 30-minute 1000 Hz record stays under 2 GiB, and that training killed at several moments
resumes to the same result.
"""

import json
import os
import runpy
import shutil
import signal
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io

import evaluate_model
import team_code
from ecgmamba import checkpoint, evaluation
from ecgmamba.inference import prepare
from ecgmamba.preprocess import PreprocessConfig
from ecgmamba.records import LEAD_SETS, TWELVE_LEADS, RecordError
from ecgmamba.scoring import load_scoring
from ecgmamba.synthetic import generate_dataset, generate_record, write_record
from test_training import ROOT, read_log, run, tiny_env

EPOCHS = 2
BASE_SEED = 5
TABLE = load_scoring("2021")

# Outcomes at inference (run_model.py): "same" gives BASE's probabilities, "same11" those of REF_11 (BASE without
# V3), "interpolated" those of REF_interp (BASE's bad samples interpolated), "classified" a model answer, "prior" the
# model's classes, all-negative labels and its training prevalence, "none" no output file at all.
# Corpus entry: name -> (outcome at inference, words of the one message naming it, skipped by training?)
CORPUS = {
    # files
    "F_hea_only": ("prior", ["F_hea_only.mat", "does not exist"], True),
    "F_mat_only": ("none", ["F_mat_only.mat", "no header file"], True),
    "F_empty_hea": ("prior", ["header file is empty"], True),
    "F_empty_mat": ("prior", ["cannot read MATLAB file"], True),
    "F_truncated_mat": ("prior", ["cannot read MATLAB file"], True),
    "F_wrong_key": ("prior", ["no 'val' matrix", "ecg"], True),
    "F_transposed": ("prior", ["transposed"], True),
    "F_int32": ("same", [], False),
    "F_float32": ("same", [], False),
    "F_float64": ("same", [], False),
    # leads
    "L_8_of_12": ("prior", ["8 leads", "header says 12"], True),
    "L_duplicated": ("same11", [], False),
    "L_unknown": ("same11", [], False),
    "L_reordered": ("same", [], False),
    "L_6": ("classified", [], False),
    "L_4": ("classified", [], False),
    "L_3": ("classified", [], False),
    "L_2": ("classified", [], False),
    "L_none_known": ("prior", ["none of the leads", "twelve standard leads"], True),
    # values
    "V_non_finite": ("interpolated", [], True),
    "V_all_nan": ("prior", ["no finite sample"], True),
    "V_flat_lead": ("classified", [], False),
    "V_saturated": ("classified", [], False),
    "V_one_sample": ("classified", [], True),
    "V_zero_length": ("prior", ["at least one lead, one sample"], True),
    "V_gain_zero": ("prior", ["gain '0/mV'"], True),
    "V_gain_missing": ("prior", ["9 fields", "found 8"], True),
    "V_baseline": ("same", [], False),
    # sizes and rates
    "R_257": ("classified", [], False),
    "R_360": ("classified", [], False),
    "R_1000": ("classified", [], False),
    "S_2s": ("classified", [], False),
    "S_30min_1000": ("classified", [], False),
    # text
    "T_non_utf8": ("same", [], False),
    "T_crlf": ("same", [], False),
    "T_trailing_blank": ("same", [], False),
    "T_age_variants": ("same", [], False),
    "T_units_lowercase": ("same", [], False),
    "T_no_dx": ("same", [], False),
    "T_dx_spaces": ("same", [], False),
    # references the faults are compared with
    "BASE": ("classified", [], False),
    "REF_11": ("classified", [], False),
    "REF_interp": ("classified", [], False),
}
NUM_CLEAN = 12  # plain synthetic records CLEAN00001.. beside the faults, so training has varied labels


# ---------------------------------------------------------------------------------------------------------------
# Building the corpus


def split_header(text):
    lines = text.rstrip("\n").split("\n")
    num_leads = int(lines[0].split()[1])
    return lines[0], lines[1:1 + num_leads], lines[1 + num_leads:]


def join_header(record_line, signal_lines, comments, newline="\n"):
    return newline.join([record_line, *signal_lines, *comments]) + newline


def with_fields(record_line, num_leads=None, num_samples=None):
    fields = record_line.split()
    if num_leads is not None:
        fields[1] = str(num_leads)
    if num_samples is not None:
        fields[3] = str(num_samples)
    return " ".join(fields)


def renamed(signal_line, lead):
    return " ".join(signal_line.split()[:-1] + [lead])


def write(directory, name, text=None, val=None, key="val"):
    """name.hea (text; str written as is, bytes raw) and name.mat (val under key); None leaves a file out."""
    if text is not None:
        text = text.replace("BASE", name) if isinstance(text, str) else text.replace(b"BASE", name.encode())
        with open(os.path.join(directory, name + ".hea"), "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
    if val is not None:
        scipy.io.savemat(os.path.join(directory, name + ".mat"), {key: val}, format="4")


def synthetic(directory, name, fs, seconds=10.0):
    """A clean synthetic record written as name; returns its (header text with 'BASE' as name, int16 val)."""
    signal_mv, labels, age, sex = generate_record(np.random.default_rng(BASE_SEED), fs, seconds)
    write_record(directory, name, signal_mv, fs, labels, age, sex)
    with open(os.path.join(directory, name + ".hea")) as f:
        text = f.read().replace(name, "BASE")
    return text, scipy.io.loadmat(os.path.join(directory, name + ".mat"))["val"]


def build_corpus(d):
    text, val = synthetic(d, "BASE", 500)
    record_line, signal_lines, comments = split_header(text)
    v3 = TWELVE_LEADS.index("V3")

    # files
    write(d, "F_hea_only", text)
    write(d, "F_mat_only", None, val)
    write(d, "F_empty_hea", "", val)
    write(d, "F_empty_mat", text)
    open(os.path.join(d, "F_empty_mat.mat"), "wb").close()
    write(d, "F_truncated_mat", text, val)
    with open(os.path.join(d, "F_truncated_mat.mat"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 3)
    write(d, "F_wrong_key", text, val, key="ecg")
    write(d, "F_transposed", text, np.ascontiguousarray(val.T))
    write(d, "F_int32", text, val.astype(np.int32))
    write(d, "F_float32", text, val.astype(np.float32))
    write(d, "F_float64", text, val.astype(np.float64))

    # leads
    write(d, "L_8_of_12", text, val[:8])
    write(d, "REF_11", join_header(with_fields(record_line, 11), signal_lines[:v3] + signal_lines[v3 + 1:], comments),
          np.delete(val, v3, axis=0))
    duplicated = list(signal_lines)
    duplicated[v3] = renamed(duplicated[v3], "II")
    write(d, "L_duplicated", join_header(record_line, duplicated, comments), val)
    unknown = list(signal_lines)
    unknown[v3] = renamed(unknown[v3], "V3R")
    write(d, "L_unknown", join_header(record_line, unknown, comments), val)
    write(d, "L_reordered", join_header(record_line, signal_lines[::-1], comments), val[::-1].copy())
    for leads in LEAD_SETS[1:]:
        rows = [TWELVE_LEADS.index(lead) for lead in leads]
        write(d, f"L_{len(leads)}", join_header(with_fields(record_line, len(leads)),
                                                [signal_lines[i] for i in rows], comments), val[rows])
    write(d, "L_none_known", join_header(record_line, [renamed(line, f"X{i}") for i, line in enumerate(signal_lines)],
                                         comments), val)

    # values
    broken = val.astype(np.float64)
    broken[1, 100:110] = np.nan
    broken[4, 2000] = np.inf
    broken[7, 10] = -np.inf
    write(d, "V_non_finite", text, broken)
    interpolated = broken.copy()
    for lead in interpolated:  # what inference must do with them: linear interpolation
        bad = ~np.isfinite(lead)
        lead[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), lead[~bad])
    write(d, "REF_interp", text, interpolated)
    write(d, "V_all_nan", text, np.full(val.shape, np.nan))
    flat = val.copy()
    flat[6] = 0
    write(d, "V_flat_lead", text, flat)
    saturated = val.copy()
    saturated[1] = np.clip(val[1].astype(np.int64) * 60, -32768, 32767)
    write(d, "V_saturated", text, saturated)
    write(d, "V_one_sample", join_header(with_fields(record_line, num_samples=1), signal_lines, comments), val[:, :1])
    write(d, "V_zero_length", join_header(with_fields(record_line, num_samples=0), signal_lines, comments),
          val[:, :0])
    write(d, "V_gain_zero", text.replace("1000/mV", "0/mV"), val)
    write(d, "V_gain_missing", text.replace(" 1000/mV", ""), val)
    write(d, "V_baseline", text.replace("1000/mV", "1000(7)/mV"), val + 7)

    # sizes and rates
    for fs in (257, 360, 1000):
        synthetic(d, f"R_{fs}", fs)
    short_text, short_val = synthetic(d, "S_2s", 500)
    short_line, short_signals, short_comments = split_header(short_text)
    write(d, "S_2s", join_header(with_fields(short_line, num_samples=1000), short_signals, short_comments),
          short_val[:, :1000])
    long_text, long_val = synthetic(d, "S_30min_1000", 1000)
    long_line, long_signals, long_comments = split_header(long_text)
    long_val = np.tile(long_val, 180)  # 10 s x 180 = 30 minutes at 1000 Hz
    write(d, "S_30min_1000", join_header(with_fields(long_line, num_samples=long_val.shape[1]), long_signals,
                                         long_comments), long_val)

    # text
    write(d, "T_non_utf8", text.replace("#Hx: Unknown", "#Hx: caf\udce9").encode("utf-8", "surrogateescape")
          + b"#Note: \xff\xfe not UTF-8\n", val)
    write(d, "T_crlf", join_header(record_line, signal_lines, comments, newline="\r\n"), val)
    write(d, "T_trailing_blank", text + "\n\n   \n\n", val)
    write(d, "T_age_variants", text.replace("#Age:", "# Age:") + "#Age: NaN\n", val)
    write(d, "T_units_lowercase", text.replace("/mV", "/mv"), val)
    write(d, "T_no_dx", join_header(record_line, signal_lines, [c for c in comments if not c.startswith("#Dx")]), val)
    dx = next(c for c in comments if c.startswith("#Dx"))
    write(d, "T_dx_spaces", text.replace(dx, "#Dx:  " + " ,  ".join(dx[5:].split(",")) + " "), val)

    generate_dataset(d, NUM_CLEAN, seed=11, prefix="CLEAN")
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """The tiny model trained on the corpus: (model folder, completed process)."""
    model_dir = str(tmp_path_factory.mktemp("model"))
    result = run(["train_model.py", corpus, model_dir], tiny_env(epochs=EPOCHS))
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


# Runs a script as __main__ and prints its peak resident memory (VmHWM) to stderr when the process exits.
PEAK_MEMORY = """
import atexit, runpy, sys
def peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            print('VmHWM_kB', line.split()[1], file=sys.stderr)
atexit.register(peak)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.fixture(scope="module")
def inference(tmp_path_factory, corpus, trained):
    """run_model.py over the whole corpus: (output folder, completed process, peak memory in bytes)."""
    out_dir = str(tmp_path_factory.mktemp("outputs"))
    result = run(["-c", PEAK_MEMORY, "run_model.py", trained[0], corpus, out_dir], tiny_env())
    peak = [int(line.split()[1]) * 1024 for line in result.stderr.splitlines() if line.startswith("VmHWM_kB")]
    return out_dir, result, peak[0] if peak else None


def read_csv(out_dir, name):
    with open(os.path.join(out_dir, name + ".csv")) as f:
        lines = f.read().split("\n")
    return lines[0], lines[1].split(","), [int(v) for v in lines[2].split(",")], np.array(lines[3].split(","), float)


def model_meta(model_dir, leads=TWELVE_LEADS):
    with open(os.path.join(model_dir, "model_" + "-".join(leads) + ".json")) as f:
        return json.load(f)


def lines_naming(text, name):
    return [line for line in text.splitlines() if name + "." in line or line.endswith(name)]


# ---------------------------------------------------------------------------------------------------------------
# run_model.py / test_model.py


def test_run_model_succeeds_and_every_header_gets_a_valid_csv(corpus, trained, inference):
    out_dir, result, _ = inference
    assert result.returncode == 0, result.stderr[-3000:]
    headers = sorted(name[:-4] for name in os.listdir(corpus) if name.endswith(".hea"))
    assert sorted(name[:-4] for name in os.listdir(out_dir)) == headers  # no temporary files left either
    classes = model_meta(trained[0])["classes"]
    for name in headers:
        recording_id, file_classes, labels, probabilities = read_csv(out_dir, name)
        assert recording_id == "#" + name
        assert file_classes == classes and len(labels) == len(probabilities) == 26
        assert set(labels) <= {0, 1} and np.all((probabilities >= 0) & (probabilities <= 1))
    prior_count = sum(outcome == "prior" for outcome, _, _ in CORPUS.values())
    done = len(headers) - prior_count
    assert f"Done: {done} recordings, {prior_count} failed, 1 skipped" in result.stdout


def test_unusable_recordings_get_the_prior_and_one_message_each(trained, inference):
    out_dir, result, _ = inference
    prior = np.array(model_meta(trained[0])["prior"])
    assert 0 < prior.sum() and np.all((prior >= 0) & (prior <= 1))
    for name, (outcome, words, _) in CORPUS.items():
        messages = lines_naming(result.stderr, name)
        if outcome in ("prior", "none"):
            assert len(messages) == 1, (name, messages)
            assert all(word in messages[0] for word in words), (name, messages)
        else:
            assert messages == [], (name, messages)
        if outcome == "prior":
            _, _, labels, probabilities = read_csv(out_dir, name)
            assert labels == [0] * 26 and np.array_equal(probabilities, prior), name
        if outcome == "none":
            assert not os.path.exists(os.path.join(out_dir, name + ".csv"))


def test_usable_faults_are_classified_like_the_clean_record(trained, inference):
    out_dir, _, _ = inference
    prior = np.array(model_meta(trained[0])["prior"])
    reference = {"same": read_csv(out_dir, "BASE")[3], "same11": read_csv(out_dir, "REF_11")[3],
                 "interpolated": read_csv(out_dir, "REF_interp")[3]}
    # The tiny model's answers differ little between records (a few 1e-6 between the references), and float32
    # work batched or scaled differently moves them by a few units in the last place (up to about 1e-7 with the
    # spread in "stats" pooling: a square root of a variance). So a record must be within float noise of its own
    # reference and several times nearer to it than to either other reference.
    def distance(a, b):
        return float(np.abs(a - b).max())

    for name, (outcome, _, _) in CORPUS.items():
        if outcome in ("prior", "none"):
            continue
        probabilities = read_csv(out_dir, name)[3]
        assert distance(probabilities, prior) > 1e-3, name
        if outcome in reference:
            own = distance(probabilities, reference[outcome])
            nearest_other = min(distance(probabilities, reference[o]) for o in reference if o != outcome)
            assert own <= 2e-7 and own * 4 < nearest_other, (name, own, nearest_other)


def test_run_model_interpolates_non_finite_samples_and_refuses_recordings_without_signal():
    """What team_code.run_model does before the network, also under the organizers' own driver."""
    text = "R 2 500 6\nR.mat 16 1000/mV 16 0 0 0 0 I\nR.mat 16 1000/mV 16 0 0 0 0 II\n"
    model = SimpleNamespace(model_leads=("I", "II"), preprocess=PreprocessConfig(target_fs=500))
    raw = np.array([[0, 10, np.nan, 30, 40, 50], [1, 2, 3, 4, np.inf, 6]], dtype=np.float64)
    filled = np.array([[0, 10, 20, 30, 40, 50], [1, 2, 3, 4, 5, 6]], dtype=np.float64)
    np.testing.assert_allclose(prepare(model, text, raw), prepare(model, text, filled), atol=1e-6)
    with pytest.raises(RecordError, match="no finite sample"):
        prepare(model, text, np.full((2, 6), np.nan))
    with pytest.raises(RecordError, match=r"none of the model's leads \['V1'\] is among the recording's leads"):
        prepare(SimpleNamespace(model_leads=("V1",), preprocess=model.preprocess), text, filled)


def test_peak_memory_of_a_30_minute_1000_hz_record_stays_under_2_gib(inference):
    _, result, peak = inference
    assert peak is not None, result.stderr[-2000:]
    assert peak < 2 * 2**30, f"peak resident memory {peak / 2**30:.2f} GiB"


def run_script(script, args, monkeypatch, capsys):
    """One of the organizers' command scripts run as __main__ in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        status = 0
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_test_model_py_is_the_same_driver(tmp_path, corpus, trained, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("BASE.hea", "BASE.mat", "F_truncated_mat.hea", "F_truncated_mat.mat", "F_mat_only.mat"):
        shutil.copy(os.path.join(corpus, name), data / name)
    status, out, err = run_script("test_model.py", [trained[0], str(data), str(tmp_path / "out")], monkeypatch, capsys)
    assert status == 0, err[-3000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["BASE.csv", "F_truncated_mat.csv"]
    assert "Done: 1 recordings, 1 failed, 1 skipped" in out


def organizers_loop(model_dir, data_dir):
    """The organizers' 2021 driver, as their test_model.py describes it: every lead set is loaded first, outside
    any try, then run_model runs inside one, and a failure gives an empty output. Records that their own helper
    cannot read (their driver stops there, before our code is called) are left out. Returns {name: result or None}.
    """
    import helper_code as hc

    readable = {}
    for header_file, recording_file in zip(*hc.find_challenge_files(data_dir)):
        try:
            header = hc.load_header(header_file)
            readable[header_file] = (header, hc.load_recording(recording_file), hc.sort_leads(hc.get_leads(header)))
        except Exception:  # noqa: BLE001 - would stop the organizers' run before team_code is involved
            continue
    models = {leads: team_code.load_model(model_dir, leads) for _, _, leads in readable.values()}
    results = {}
    for header_file, (header, recording, leads) in readable.items():
        try:
            results[os.path.basename(header_file)[:-4]] = team_code.run_model(models[leads], header, recording)
        except Exception:  # noqa: BLE001
            results[os.path.basename(header_file)[:-4]] = None
    return results


def test_the_organizers_driver_loads_a_model_for_every_lead_set_and_agrees_with_ours(corpus, trained, inference):
    results = organizers_loop(trained[0], corpus)
    assert {"L_none_known", "L_duplicated", "L_unknown", "L_2", "V_all_nan", "BASE"} <= set(results)
    for name, result in results.items():
        outcome = CORPUS.get(name, ("classified",))[0]
        if outcome == "prior":  # run_model raised: their driver writes its empty output
            assert result is None, name
            continue
        assert result is not None, name
        classes, labels, probabilities = result
        _, our_classes, our_labels, our_probabilities = read_csv(inference[0], name)
        assert classes == our_classes and labels == our_labels, name
        # Another process with another thread count: float32 sums in another order, so agreement to 1e-6.
        np.testing.assert_allclose(probabilities, our_probabilities, rtol=0, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# train_model.py


def test_training_skips_each_unusable_recording_with_one_line_and_counts_them(corpus, trained):
    _, result = trained
    skipped = [name for name, (_, _, skip) in CORPUS.items() if skip]
    for name, (_, _, skip) in CORPUS.items():
        messages = [line for line in lines_naming(result.stderr, name) if line.startswith("skipped ")]
        assert len(messages) == (1 if skip else 0), (name, messages)
    assert "V_one_sample.hea: recording lasts 0.002 s; training needs at least 1 s" in result.stderr
    assert "V_non_finite.mat: signal has 12 non-finite samples" in result.stderr
    usable = len(CORPUS) + NUM_CLEAN - len(skipped)
    assert f"Training on {usable} recordings ({len(skipped)} skipped)" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# evaluate_model.py


def test_evaluate_model_scores_the_corpus_outputs(tmp_path, corpus, inference):
    out_dir = inference[0]
    assert evaluate_model.main([corpus, out_dir, str(tmp_path / "scores.csv")]) == 0
    header, values = (tmp_path / "scores.csv").read_text().splitlines()
    assert header == "AUROC,AUPRC,Accuracy,F-measure,Challenge metric"
    scores = [float(v) for v in values.split(",")]
    assert all(np.isfinite(scores)) and all(0 <= v <= 1 for v in scores[:4])
    # Every header in the corpus was scored, the prior-only outputs like any other.
    scored = evaluation.load_evaluation(corpus, out_dir, TABLE)
    assert len(scored.record_ids) == len([name for name in os.listdir(corpus) if name.endswith(".hea")])


def test_evaluate_model_output_faults(tmp_path, capsys):
    labels, outputs = tmp_path / "labels", tmp_path / "outputs"
    labels.mkdir()
    outputs.mkdir()
    af, sr, lbbb = "164889003", "426783006", "164909002"
    codes = TABLE.class_codes
    for name in ("A1", "A2", "A3", "A4", "A5", "A6"):
        (labels / f"{name}.hea").write_text(f"{name} 12 500 5000\n#Dx: {af}\n")

    def output(name, classes, binary, scalar):
        (outputs / f"{name}.csv").write_text(f"#{name}\n{','.join(classes)}\n{','.join(binary)}\n{','.join(scalar)}\n")

    output("A1", codes, ["1"] + ["0"] * 25, ["0.9"] + ["0.1"] * 25)  # reference
    output("A2", codes[::-1], (["0"] * 25 + ["1"]), (["0.1"] * 25 + ["0.9"]))  # classes in another order
    output("A3", ["999999", codes[0], "55930002"], ["1", "1", "1"], ["0.7", "0.9", "0.7"])  # unknown extras
    output("A4", [af, sr, lbbb], ["True", "False", "true"], ["nan", "inf", "-inf"])  # words, non-numbers
    output("A5", [af, sr], ["T", "F"], ["0.5", "abc"])
    (outputs / "A6.csv").write_text("")  # empty: named, scored as all negative, the rest still scored
    e = evaluation.load_evaluation(str(labels), str(outputs), TABLE)
    assert not e.binary_outputs[5].any() and not e.scalar_outputs[5].any()
    assert "A6.csv: expected 4 lines" in capsys.readouterr().err
    assert evaluate_model.main([str(labels), str(outputs)]) == 0
    capsys.readouterr()
    os.remove(outputs / "A6.csv")  # missing
    assert evaluate_model.main([str(labels), str(outputs)]) == 1
    assert "A6.csv" in capsys.readouterr().err

    (labels / "A6.hea").unlink()
    e = evaluation.load_evaluation(str(labels), str(outputs), TABLE)
    j = {code: codes.index(code) for code in (af, sr)}
    j[lbbb] = next(k for k, c in enumerate(codes) if lbbb in c.split("|"))
    assert np.array_equal(e.binary_outputs[0], e.binary_outputs[1])
    assert np.array_equal(e.scalar_outputs[0], e.scalar_outputs[1]) and e.scalar_outputs[0, 0] == 0.9
    assert e.binary_outputs[2].sum() == 1 and e.scalar_outputs[2].sum() == 0.9  # extras ignored, absent classes 0
    assert e.binary_outputs[3].tolist() == [k in (j[af], j[lbbb]) for k in range(26)]
    assert not e.scalar_outputs[3].any()  # nan and inf count as 0
    assert e.binary_outputs[4, j[af]] and e.scalar_outputs[4, j[af]] == 0.5 and not e.binary_outputs[4, j[sr]]
    assert e.scalar_outputs[4, j[sr]] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# The model folder


@pytest.fixture
def model_copy(tmp_path, trained):
    copy = tmp_path / "model"
    shutil.copytree(trained[0], copy, ignore=shutil.ignore_patterns("cache", "checkpoints"))
    return copy


def stem(model_dir, leads):
    return os.path.join(model_dir, "model_" + "-".join(leads))


def test_damaged_model_files_are_refused_with_their_name(model_copy):
    twelve, two = stem(model_copy, TWELVE_LEADS), stem(model_copy, ("I", "II"))
    with open(twelve + ".safetensors", "rb") as f:
        intact = f.read()
    with open(twelve + ".safetensors", "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 2)
    for leads in (TWELVE_LEADS, ("I", "II")):  # the 2-lead model is stored as its differences from the 12-lead one
        with pytest.raises(checkpoint.ModelFileError, match="truncated") as error:
            team_code.load_model(str(model_copy), leads)
        assert str(error.value).startswith(twelve + ".safetensors: ")
    with open(twelve + ".safetensors", "wb") as f:
        f.write(intact)

    with open(two + ".safetensors", "r+b") as f:  # one flipped byte in the last tensor's data
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(checkpoint.ModelFileError, match="damaged weight file") as error:
        team_code.load_model(str(model_copy), ("I", "II"))
    assert str(error.value).startswith(two + ".safetensors: ")

    six = stem(model_copy, LEAD_SETS[1])
    with open(six + ".json", "wb") as f:
        f.write(b"\x00\x17garbage{")
    with pytest.raises(checkpoint.ModelFileError, match="not valid JSON") as error:
        team_code.load_model(str(model_copy), LEAD_SETS[1])
    assert str(error.value).startswith(six + ".json: ")
    with open(six + ".json", "w") as f:
        json.dump(["a", "list"], f)
    with pytest.raises(checkpoint.ModelFileError, match="expected a JSON object"):
        team_code.load_model(str(model_copy), LEAD_SETS[1])

    three = stem(model_copy, LEAD_SETS[3])
    meta = json.loads(open(three + ".json").read())
    meta["thresholds"] = meta["thresholds"][:3]
    open(three + ".json", "w").write(json.dumps(meta))
    with pytest.raises(checkpoint.ModelFileError, match="3 thresholds") as error:
        team_code.load_model(str(model_copy), LEAD_SETS[3])
    assert str(error.value).startswith(three + ".json: ")


def test_run_model_with_an_unloadable_model_names_it_once_and_exits_non_zero(tmp_path, corpus, model_copy,
                                                                           monkeypatch, capsys):
    with open(stem(model_copy, TWELVE_LEADS) + ".json", "w") as f:
        f.write("{")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("BASE", "T_crlf", "F_int32"):
        for extension in (".hea", ".mat"):
            shutil.copy(os.path.join(corpus, name + extension), data / (name + extension))
    status, out, err = run_script("run_model.py", [str(model_copy), str(data), str(tmp_path / "out")], monkeypatch,
                                  capsys)
    assert status == 1
    model_lines = [line for line in err.splitlines() if line.startswith("cannot load the model")]
    assert len(model_lines) == 1, model_lines
    assert os.path.basename(stem(model_copy, TWELVE_LEADS)) + ".json: not valid JSON" in model_lines[0]
    assert len([line for line in err.splitlines() if line.startswith("failed ")]) == 3
    assert sorted(os.listdir(tmp_path / "out")) == ["BASE.csv", "F_int32.csv", "T_crlf.csv"]
    assert "Done: 0 recordings, 3 failed" in out


def test_a_team_code_that_answers_badly_costs_only_its_recordings(tmp_path, corpus):
    """run_models returning too few results, or run_model a label that is not a number, must not stop the run."""
    from ecgmamba.driver import run_folder

    data = tmp_path / "data"
    data.mkdir()
    names = ["BASE", "T_crlf", "F_int32", "T_no_dx"]
    for name in names:
        for extension in (".hea", ".mat"):
            shutil.copy(os.path.join(corpus, name + extension), data / (name + extension))
    classes = ["164889003", "426783006"]

    def run_model(model, header, recording):
        if header.startswith("F_int32"):
            return classes, ["yes", 0], [0.5, 0.5]  # not a 0/1 label
        return classes, [1, 0], [0.9, 0.1]

    team = SimpleNamespace(load_model=lambda directory, leads: SimpleNamespace(classes=classes, prior=None),
                           run_model=run_model,
                           run_models=lambda model, headers, recordings: [run_model(model, headers[0], None)])
    messages = []
    summary = run_folder(team, "unused", str(data), str(tmp_path / "out"), progress=False, log=messages.append)
    assert summary["done"] == 3 and [os.path.basename(path) for path, _ in summary["failed"]] == ["F_int32.hea"]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(name + ".csv" for name in names)
    _, _, labels, probabilities = read_csv(str(tmp_path / "out"), "BASE")
    assert labels == [1, 0] and probabilities.tolist() == [0.9, 0.1]
    assert read_csv(str(tmp_path / "out"), "F_int32")[2] == [0, 0]
    assert len(messages) == 1 and "F_int32" in messages[0] and "yes" in messages[0]


# For each MODEL_DIR:MOMENT argument, a forked child saves a changed 2-lead model into MODEL_DIR and SIGKILLs itself
# at MOMENT: "weights" halfway through writing the weights, "json" after the weights, before their description.
KILLED_SAVES = """
import os, signal, sys
import torch
from ecgmamba import checkpoint, inference
from ecgmamba.scoring import load_scoring

def save_and_die(model_dir, moment):
    model = inference.load_model(model_dir, ("I", "II"), device="cpu")
    with torch.no_grad():
        for p in model.network.parameters():
            p.add_(0.5)
    real_save_file = checkpoint.save_file

    def half_written(tensors, path, metadata=None):
        real_save_file(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    def killed(path, data):
        os.kill(os.getpid(), signal.SIGKILL)

    if moment == "weights":
        checkpoint.save_file = half_written
    else:
        checkpoint.save_json = killed
    inference.save_lead_model(model_dir, ("I", "II"), model.network, load_scoring("2021"), model.thresholds,
                              model.preprocess)

for target in sys.argv[1:]:
    model_dir, moment = target.rsplit(":", 1)
    pid = os.fork()
    if pid == 0:
        save_and_die(model_dir, moment)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(moment, "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else status)
"""


def test_a_kill_while_saving_never_leaves_a_model_that_loads_half_written(tmp_path, model_copy):
    other_copy = tmp_path / "model2"
    shutil.copytree(model_copy, other_copy)
    before = checkpoint.tensors_digest(team_code.load_model(str(model_copy), ("I", "II")).network.state_dict())
    result = run(["-c", KILLED_SAVES, f"{model_copy}:weights", f"{other_copy}:json"], tiny_env())
    assert result.stdout.split() == ["weights", "killed", "json", "killed"], result.stderr[-2000:]

    # Killed while writing the weights: the half-written file is a temporary one; the previous model loads whole.
    assert any(name.startswith(".model_I-II.safetensors.tmp") for name in os.listdir(model_copy))
    model = team_code.load_model(str(model_copy), ("I", "II"))
    assert checkpoint.tensors_digest(model.network.state_dict()) == before

    # Killed between the weights and their description: the new weights with the old description are refused.
    with pytest.raises(checkpoint.ModelFileError, match="not the ones its JSON description was saved with") as error:
        team_code.load_model(str(other_copy), ("I", "II"))
    assert str(error.value).startswith(stem(other_copy, ("I", "II")) + ".safetensors: ")


# ---------------------------------------------------------------------------------------------------------------
# Training killed at different moments resumes to the same result


# Runs train_model.py and SIGKILLs it at the call after FAULT_AFTER calls of the function FAULT_AT names.
KILLED_TRAINING = """
import os, runpy, signal, sys
moment, after = os.environ["FAULT_AT"], int(os.environ["FAULT_AFTER"])
calls = [0]

def kill_at(owner, name, counts=lambda *args: True):
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if counts(*args, **kwargs):
            calls[0] += 1
            if calls[0] > after:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)

if moment == "caching":  # between two chunks of records written into the cache
    import ecgmamba.cache as cache
    kill_at(cache, "_process_chunk")
elif moment == "mid_epoch":  # inside the second epoch, a few batches in
    import ecgmamba.train as train
    kill_at(train.WindowDataset, "__getitem__", lambda self, i: self.epoch == 1)
elif moment == "between_checkpoint_files":  # the second epoch's tensors saved, its description not yet
    import ecgmamba.checkpoint as checkpoint
    kill_at(checkpoint, "save_json", lambda path, data: path.endswith(os.path.join("checkpoints", "shared.json")))
sys.argv = ["train_model.py"] + sys.argv[1:]
runpy.run_path("train_model.py", run_name="__main__")
"""


def killed_training(corpus, model_dir, moment, after):
    result = run(["-c", KILLED_TRAINING, corpus, model_dir],
                 dict(tiny_env(epochs=EPOCHS), FAULT_AT=moment, FAULT_AFTER=str(after)))
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    return result


def assert_same_result(model_dir, reference_dir):
    keys = ("phase", "epoch", "steps", "train_loss", "val_auroc", "val_auprc", "val_challenge")
    rows = [[r[k] for k in keys] for r in read_log(model_dir)]
    assert rows == [[r[k] for k in keys] for r in read_log(reference_dir)]
    for leads in LEAD_SETS:
        resumed, reference = model_meta(model_dir, leads), model_meta(reference_dir, leads)
        assert resumed["thresholds"] == reference["thresholds"]
        assert resumed["weights_sha256"] == reference["weights_sha256"]  # bit-identical weights


def test_training_killed_while_caching_and_mid_epoch_resumes_to_the_same_result(tmp_path, corpus, trained):
    model_dir = str(tmp_path / "model")
    killed_training(corpus, model_dir, "caching", 3)
    assert os.path.exists(os.path.join(model_dir, "cache", "signals.npy"))
    assert not os.path.exists(os.path.join(model_dir, "cache", "meta.json"))  # an unfinished cache never looks valid
    killed_training(corpus, model_dir, "mid_epoch", 10)
    assert [row["epoch"] for row in read_log(model_dir)] == ["1"]
    result = run(["train_model.py", corpus, model_dir], tiny_env(epochs=EPOCHS))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[shared] resuming after epoch 1" in result.stderr
    assert_same_result(model_dir, trained[0])


def test_training_killed_between_the_two_checkpoint_files_resumes_to_the_same_result(tmp_path, corpus, trained):
    model_dir = str(tmp_path / "model")
    killed_training(corpus, model_dir, "between_checkpoint_files", 1)
    result = run(["train_model.py", corpus, model_dir], tiny_env(epochs=EPOCHS))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_result(model_dir, trained[0])
