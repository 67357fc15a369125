"""evaluate_model.py and ecgmamba/evaluation.py end to end on small label and output folders."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evaluate_model
from ecgmamba import evaluation
from ecgmamba.metrics import compute_auc, compute_challenge_metric, compute_f_measure
from ecgmamba.records import parse_labels
from ecgmamba.scoring import load_scoring

ROOT = Path(__file__).resolve().parents[1]
TABLE = load_scoring("2021")
AF, SR, CRBBB = "164889003", "426783006", "713427006|59118001"


def write_header(directory, record, codes):
    """A minimal header: the evaluation reads only the #Dx line."""
    text = f"{record} 12 500 5000\n#Age: 50\n#Sex: Male\n#Dx: {','.join(codes)}\n"
    (Path(directory) / f"{record}.hea").write_text(text)


def write_output(directory, record, classes, binary, scalar):
    lines = [f"#{record}", ",".join(classes), ",".join(str(b) for b in binary), ",".join(str(s) for s in scalar)]
    (Path(directory) / f"{record}.csv").write_text("\n".join(lines) + "\n")


def canonical_output(directory, record, binary_by_code, scalar_by_code):
    """An output over all 26 classes in table order: given codes set, the rest 0."""
    binary = [int(binary_by_code.get(c, 0)) for c in TABLE.class_codes]
    scalar = [scalar_by_code.get(c, 0.0) for c in TABLE.class_codes]
    write_output(directory, record, TABLE.class_codes, binary, scalar)


@pytest.fixture
def folders(tmp_path):
    """Four records: AF, sinus rhythm, CRBBB (coded as 59118001) and AF + sinus rhythm."""
    labels, outputs = tmp_path / "labels", tmp_path / "outputs"
    labels.mkdir()
    outputs.mkdir()
    write_header(labels, "A0001", [AF])
    write_header(labels, "HR00001", [SR, "55930002"])  # an unscored code too
    write_header(labels, "E00001", ["59118001"])
    write_header(labels, "JS00001", [AF, SR])
    (labels / ".hidden.hea").write_text("ignored")
    (labels / "notes.txt").write_text("ignored")
    canonical_output(outputs, "A0001", {AF: 1}, {AF: 0.9, SR: 0.2})
    canonical_output(outputs, "HR00001", {SR: 1}, {AF: 0.1, SR: 0.8, CRBBB: 0.3})
    canonical_output(outputs, "E00001", {SR: 1}, {AF: 0.3, SR: 0.6, CRBBB: 0.7})
    canonical_output(outputs, "JS00001", {AF: 1}, {AF: 0.8, SR: 0.4})
    return labels, outputs


def test_end_to_end_files_and_numbers(folders, tmp_path, capsys):
    labels, outputs = folders
    scores_file, class_file = tmp_path / "scores.csv", tmp_path / "class_scores.csv"
    assert evaluate_model.main([str(labels), str(outputs), str(scores_file), str(class_file)]) == 0

    af, sr, crbbb = (TABLE.class_codes.index(c) for c in (AF, SR, CRBBB))
    # AF: positives score .9, .8 above negatives .1, .3: AUROC 1, AUPRC 1; F = 2*2 / (2*2 + 0 + 0) = 1.
    # SR: positives .8, .4 against negatives .2, .6: 3 of 4 pairs right, AUROC .75;
    #     sweep .8 (TP), .6 (FP), .4 (TP): AUPRC = .5 * 1 + .5 * 2/3; F = 2*1 / (2 + 1 + 1) = .5.
    # CRBBB: the positive scores .7 above .3, 0, 0: AUROC 1, AUPRC 1; never output, F = 0.
    # Accuracy: records A0001 and HR00001 are exactly right, JS00001 misses SR, E00001 is wrong: .5.
    # Challenge metric, each record's credit divided by the size of labels ∪ outputs:
    # observed: A0001 1, HR00001 1, E00001 w(CRBBB, SR) / 2, JS00001 (w(AF, AF) + w(SR, AF)) / 2;
    # perfect: 1 + 1 + 1 + (w(AF, AF) + w(AF, SR) + w(SR, AF) + w(SR, SR)) / 2;
    # always sinus rhythm: w(AF, SR) / 2 + 1 + w(CRBBB, SR) / 2 + (w(AF, SR) + w(SR, SR)) / 2.
    w = TABLE.weights
    observed = 1 + 1 + w[crbbb, sr] / 2 + (w[af, af] + w[sr, af]) / 2
    perfect = 3 + (w[af, af] + w[af, sr] + w[sr, af] + w[sr, sr]) / 2
    inactive = w[af, sr] / 2 + 1 + w[crbbb, sr] / 2 + (w[af, sr] + w[sr, sr]) / 2
    challenge = (observed - inactive) / (perfect - inactive)
    macro_auroc = (1 + 0.75 + 1) / 3
    macro_auprc = (1 + 0.5 + 1 / 3 + 1) / 3
    macro_f = (1 + 0.5 + 0) / 3
    expected = "AUROC,AUPRC,Accuracy,F-measure,Challenge metric\n" + ",".join(
        f"{x:.3f}" for x in (macro_auroc, macro_auprc, 0.5, macro_f, challenge))
    assert scores_file.read_text() == expected  # no trailing newline, like the organizers' file

    rows = class_file.read_text().split("\n")
    assert [row.split(",")[0] for row in rows] == ["Classes", "AUROC", "AUPRC", "F-measure"]
    classes = rows[0].split(",")[1:]
    assert len(classes) == 26 and "59118001|713427006" in classes  # equivalents sorted, as they print them
    auroc = rows[1].split(",")[1:]
    assert auroc[af] == "1.000" and auroc[sr] == "0.750" and auroc[crbbb] == "1.000"
    assert auroc.count("nan") == 23  # classes without positives
    assert rows[3].split(",")[1:][sr] == "0.500"

    printed = capsys.readouterr().out
    assert expected in printed and "4 records, 26 scored classes" in printed
    assert "CRBBB|RBBB" in printed  # the per-class table


def test_evaluate_model_function_returns_the_organizers_tuple(folders):
    labels, outputs = folders
    result = evaluate_model.evaluate_model(str(labels), str(outputs))
    classes, auroc, auprc, auroc_classes, auprc_classes, accuracy, f_measure, f_measure_classes, challenge = result
    assert classes == [set(codes) for codes in TABLE.classes]
    assert auroc == pytest.approx((1 + 0.75 + 1) / 3) and accuracy == 0.5
    assert len(auroc_classes) == len(auprc_classes) == len(f_measure_classes) == 26
    assert evaluation.evaluate_model(str(labels), str(outputs), weights=TABLE)[5] == accuracy


def test_loaded_arrays(folders):
    labels, outputs = folders
    e = evaluation.load_evaluation(str(labels), str(outputs), TABLE)
    assert e.record_ids == ["A0001", "E00001", "HR00001", "JS00001"]  # sorted file names, hidden file skipped
    af, sr, crbbb = (TABLE.class_codes.index(c) for c in (AF, SR, CRBBB))
    assert np.flatnonzero(e.labels[1]).tolist() == [crbbb]
    assert np.flatnonzero(e.labels[3]).tolist() == sorted([af, sr])
    assert e.scalar_outputs[2, crbbb] == 0.3 and e.binary_outputs[2, sr]


def test_missing_outputs_are_all_named(folders, capsys):
    labels, outputs = folders
    (outputs / "A0001.csv").unlink()
    (outputs / "JS00001.csv").unlink()
    with pytest.raises(FileNotFoundError) as error:
        evaluation.find_challenge_files(str(labels), str(outputs))
    message = str(error.value)
    assert "2 output file(s) missing" in message and "A0001.csv" in message and "JS00001.csv" in message
    assert isinstance(error.value, IOError)  # what the organizers' code raises
    assert evaluate_model.main([str(labels), str(outputs)]) == 1
    assert "A0001.csv, JS00001.csv" in capsys.readouterr().err


def test_empty_or_absent_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no label files"):
        evaluation.find_challenge_files(str(tmp_path / "empty"), str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        evaluation.find_challenge_files(str(tmp_path / "absent"), str(tmp_path / "empty"))


@pytest.mark.parametrize("text, message", [
    ("#A0001\n164889003\n1\n", "expected 4 lines"),
    ("#A0001\n164889003,426783006\n1\n0.5,0.5\n", "2 classes but 1 binary and 2 scalar"),
])
def test_malformed_output_file_is_named_and_scored_negative(folders, capsys, text, message):
    labels, outputs = folders
    (outputs / "A0001.csv").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        evaluation.read_output_file(str(outputs / "A0001.csv"))
    assert "A0001.csv" in str(error.value)
    result = evaluation.load_evaluation(str(labels), str(outputs), TABLE)
    row = result.record_ids.index("A0001")
    assert not result.binary_outputs[row].any() and not result.scalar_outputs[row].any()
    err = capsys.readouterr().err
    assert "A0001.csv" in err and message in err and "taken as negative" in err


def test_reordered_partial_and_extra_classes(tmp_path, folders):
    labels, outputs = folders
    expected = evaluate_model.evaluate_model(str(labels), str(outputs))
    # The same outputs as a few columns in another order, with unscored extras; absent classes count as 0.
    write_output(outputs, "A0001", ["999999", SR, AF], [1, 0, 1], [0.99, 0.2, 0.9])
    write_output(outputs, "HR00001", [CRBBB, SR, AF, "55930002"], [0, 1, 0, 1], [0.3, 0.8, 0.1, 0.5])
    write_output(outputs, "E00001", ["59118001", SR, AF], [0, 1, 0], [0.7, 0.6, 0.3])
    write_output(outputs, "JS00001", [SR, AF], [0, 1], [0.4, 0.8])
    result = evaluate_model.evaluate_model(str(labels), str(outputs))
    for a, b in zip(expected[1:], result[1:]):
        np.testing.assert_array_equal(a, b)


def test_output_value_parsing(tmp_path):
    labels, outputs = tmp_path / "labels", tmp_path / "outputs"
    labels.mkdir()
    outputs.mkdir()
    write_header(labels, "Q0001", [AF])
    write_output(outputs, "Q0001",
                 [AF, SR, "164890007", "6374002", "426627000", "713427006", "59118001", "270492004", "713426002"],
                 ["True", "t", "T", "true", "1.0", "False", "1", "yes", " 1 "],
                 ["nan", "inf", "-inf", "abc", "", " 0.25", "0.75", "1e-1", "NaN"])
    binary, scalar = evaluation.load_classifier_outputs([str(outputs / "Q0001.csv")], TABLE)
    by_code = {code: (bool(binary[0, j]), scalar[0, j]) for j, code in enumerate(TABLE.class_codes)}
    assert by_code[AF] == (True, 0.0)  # non-finite -> 0
    assert by_code[SR] == (True, 0.0)
    assert by_code["164890007"] == (True, 0.0)
    assert by_code["6374002"] == (True, 0.0)  # not a number -> 0
    assert by_code["426627000"] == (False, 0.0)  # "1.0" is not one of the positive spellings
    assert by_code[CRBBB] == (True, 0.5)  # equivalents: positive if any, scalar the mean
    assert by_code["270492004"] == (False, pytest.approx(0.1))
    assert by_code["713426002"] == (True, 0.0)  # entries are stripped
    assert by_code["164947007"] == (False, 0.0)  # absent from the file


def test_equivalent_codes_joined_in_output_header(tmp_path):
    labels, outputs = tmp_path / "labels", tmp_path / "outputs"
    labels.mkdir()
    outputs.mkdir()
    write_header(labels, "S0001", ["164909002"])  # left bundle branch block, scored with 733534002
    write_output(outputs, "S0001", ["164909002|733534002"], ["1"], ["0.6"])
    e = evaluation.load_evaluation(str(labels), str(outputs), TABLE)
    j = TABLE.class_codes.index("733534002|164909002")
    assert e.labels[0, j] and e.binary_outputs[0, j] and e.scalar_outputs[0, j] == 0.6


def test_source_of():
    assert [evaluation.source_of(r) for r in ("A0001", "Q0001", "I01", "S0001", "HR00001", "E00001", "JS00001",
                                               "X1", "SYN00001", "SYNTR00001", "HRV1", "E00001.mat")] == \
        ["CPSC", "CPSC-Extra", "INCART", "PTB", "PTB-XL", "Georgia", "Chapman-Shaoxing + Ningbo", "other", "other",
         "other", "other", "Georgia"]


def test_by_source_bootstrap_and_plots(folders, tmp_path, capsys):
    labels, outputs = folders
    plots = tmp_path / "plots"
    assert evaluate_model.main([str(labels), str(outputs), "--by-source", "--bootstrap", "20",
                                "--plots", str(plots)]) == 0
    printed = capsys.readouterr().out
    for source in ("CPSC", "PTB-XL", "Georgia", "Chapman-Shaoxing + Ningbo"):
        assert source in printed
    assert "95 % bootstrap intervals (20 resamples" in printed
    written = sorted(os.listdir(plots))
    assert len(written) == 3  # AF, CRBBB|RBBB and sinus rhythm have positive labels
    assert any("CRBBB+RBBB" in name for name in written)
    for name in written:
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    e = evaluation.load_evaluation(str(labels), str(outputs), TABLE)
    rows = evaluation.scores_by_source(e)
    assert [(source, count) for source, count, _ in rows] == [
        ("PTB-XL", 1), ("Chapman-Shaoxing + Ningbo", 1), ("CPSC", 1), ("Georgia", 1)]
    georgia = rows[3][2]
    assert georgia["Accuracy"] == 0.0


def test_weights_option(folders, tmp_path, capsys):
    labels, outputs = folders
    assert evaluate_model.main([str(labels), str(outputs), "--weights", "2020"]) == 0
    assert "4 records, 24 scored classes" in capsys.readouterr().out
    assert evaluate_model.main([str(labels), str(outputs), "--weights", str(tmp_path / "nope.csv")]) == 1
    assert "nope.csv" in capsys.readouterr().err


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as error:
        evaluate_model.main([])
    assert error.value.code == 2
    assert "usage:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_model.main(["labels", "outputs", "--bootstrap", "0"])
    assert "--bootstrap" in capsys.readouterr().err


def test_command_line(folders, tmp_path):
    labels, outputs = folders
    scores_file = tmp_path / "scores.csv"
    run = subprocess.run([sys.executable, "evaluate_model.py", str(labels), str(outputs), str(scores_file)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert scores_file.read_text().startswith("AUROC,AUPRC,Accuracy,F-measure,Challenge metric\n")


def test_real_headers_with_perfect_outputs(sample_dir, tmp_path):
    """Outputs that repeat the labels of the 50 real records score 1 everywhere it is defined."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    label_files = []
    for name in sorted(os.listdir(sample_dir)):
        if name.endswith(".hea"):
            codes = parse_labels((sample_dir / name).read_text())
            positive = {c: 1 for c in TABLE.class_codes if set(c.split("|")) & set(codes)}
            canonical_output(outputs, name[:-4], positive, {c: 1.0 for c in positive})
            label_files.append(name)
    result = evaluate_model.evaluate_model(str(sample_dir), str(outputs))
    _, auroc, auprc, _, _, accuracy, f_measure, _, challenge = result
    assert (auroc, auprc, accuracy, f_measure, challenge) == (1.0, 1.0, 1.0, 1.0, 1.0)
    e = evaluation.load_evaluation(str(sample_dir), str(outputs), TABLE)
    assert len(e.record_ids) == len(label_files) == 50
    _, _, auroc_classes, _ = compute_auc(e.labels, e.scalar_outputs)
    assert np.isnan(auroc_classes).sum() == 26 - e.labels.any(axis=0).sum()
    assert compute_f_measure(e.labels, e.binary_outputs)[0] == 1.0
    assert compute_challenge_metric(TABLE.weights, e.labels, e.binary_outputs, TABLE.sinus_rhythm_index) == 1.0
