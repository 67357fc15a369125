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
    ("", "found 0"),
    ("#A0001\n164889003,426783006\n1\n0.5,0.5\n", "column 2 ('426783006') has no binary output"),
    ("#A0001\n164889003,426783006\n1,1\n0.5\n", "column 2 ('426783006') has no scalar output"),
    (b"#A0001\n164889003\n1\n0.5\xff\n", "not UTF-8"),
])
def test_malformed_output_file_is_named_and_scored_negative(folders, capsys, text, message):
    """What the organizers' loader crashes on: fewer than 4 lines, a scored column without its entries, bad text."""
    labels, outputs = folders
    if isinstance(text, bytes):
        (outputs / "A0001.csv").write_bytes(text)
    else:
        (outputs / "A0001.csv").write_text(text)
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


def test_equivalent_codes_joined_in_output_header(tmp_path):
    labels, outputs = tmp_path / "labels", tmp_path / "outputs"
    labels.mkdir()
    outputs.mkdir()
    write_header(labels, "S0001", ["164909002"])  # left bundle branch block, scored with 733534002
    write_output(outputs, "S0001", ["164909002|733534002"], ["1"], ["0.6"])
    e = evaluation.load_evaluation(str(labels), str(outputs), TABLE)
    j = TABLE.class_codes.index("733534002|164909002")
    assert e.labels[0, j] and e.binary_outputs[0, j] and e.scalar_outputs[0, j] == 0.6


# ---------------------------------------------------------------------------------------------------------------
# The organizers' final loader (evaluation-2021), rule by rule, on adversarial files.

PVC, BRADY = "427172004|17338001", "426627000"


def load_one(tmp_path, text, header="#Dx: 164889003\n"):
    """Load one record whose output file holds `text` (str, written as is); returns the Evaluation."""
    labels, outputs = tmp_path / "labels", tmp_path / "outputs"
    labels.mkdir(exist_ok=True)
    outputs.mkdir(exist_ok=True)
    (labels / "A0001.hea").write_text("A0001 12 500 5000\n" + header, newline="")
    (outputs / "A0001.csv").write_text(text, newline="")
    return evaluation.load_evaluation(str(labels), str(outputs), TABLE)


def cell(e, code):
    """(binary, scalar) of the first record for a scored class."""
    j = TABLE.class_codes.index(code)
    return bool(e.binary_outputs[0, j]), float(e.scalar_outputs[0, j])


POSITIVE_ENTRIES = ["1", "1.0", "1.00", "1e0", " 1 ", "+1", "01", "1.", "0.1e1", "1_0e-1", "0.99999999999999999",
                    "\uff11", "True", "true", "T", "t", " t "]
NEGATIVE_ENTRIES = ["0", "0.0", "-1", "2", "1.1", "0.9999", "-1e0", "TRUE", "True1", "yes", "Y", "F", "false", "nan",
                    "inf", "1e400", "", "one", "1 1", "0x1", "1/1"]


@pytest.mark.parametrize("entry", POSITIVE_ENTRIES + NEGATIVE_ENTRIES)
def test_binary_output_is_positive_when_float_reads_one_or_a_true_word(tmp_path, entry):
    """A finite number equal to 1 by Python's float() (so '1.0', '1e0', '+1', even '1_0e-1'), or True/true/T/t."""
    e = load_one(tmp_path, f"#A0001\n{AF},{SR}\n{entry},1\n0.5,0.5\n")
    assert cell(e, AF) == (entry in POSITIVE_ENTRIES, 0.5)
    assert cell(e, SR) == (True, 0.5)
    assert evaluation.is_positive_binary(entry.strip()) == (entry in POSITIVE_ENTRIES)


@pytest.mark.parametrize("entry, value", [
    ("0.25", 0.25), (" 0.25 ", 0.25), ("1_5e-1", 1.5), ("-0", 0.0), ("1e-400", 0.0), ("-7.5", -7.5),
    ("\x0c0.5", 0.5), ("\u20280.5", 0.5),  # float() ignores these; they do not end a line either
    ("\x1c0.5", 0.0),  # str.strip() would remove it, float() does not: not a number
    ("nan", 0.0), ("NaN", 0.0), ("inf", 0.0), ("-inf", 0.0), ("Infinity", 0.0), ("1e400", 0.0), ("-1e400", 0.0),
    ("", 0.0), ("abc", 0.0), ("0x1", 0.0), ("True", 0.0),
])
def test_scalar_output_that_is_not_a_finite_number_is_zero(tmp_path, entry, value):
    e = load_one(tmp_path, f"#A0001\n{SR},{AF}\n0,0\n0.125,{entry}\n")
    assert cell(e, AF) == (False, value)
    assert cell(e, SR) == (False, 0.125)


def test_output_columns_match_classes_by_their_split_codes(tmp_path):
    """Entries are stripped at ',' but not at '|'; a column counts for every class its codes touch; several columns
    for one class: binary any, scalar mean; absent classes 0."""
    columns = [" 164889003 ", "426783006 | 713427006", "59118001|426627000", "713427006", "59118001", "999999|",
               "|", "164889003", "17338001|427172004|999"]
    binary = ["1", "1", "t", "0", "0", "1", "1", "0", "T"]
    scalar = ["0.1", "0.9", "0.6", "0.2", "0.4", "0.9", "0.9", "0.3", "0.7"]
    e = load_one(tmp_path, "#A0001\n" + "\n".join(",".join(row) for row in (columns, binary, scalar)) + "\n")
    assert cell(e, AF) == (True, np.mean([0.1, 0.3]))
    assert cell(e, SR) == (False, 0.0)  # '426783006 ' (space kept) is no code
    assert cell(e, CRBBB) == (True, (0.6 + 0.2 + 0.4) / 3)
    assert cell(e, BRADY) == (True, 0.6)  # the same column as CRBBB
    assert cell(e, PVC) == (True, 0.7)
    touched = {AF, CRBBB, BRADY, PVC}
    assert not any(cell(e, code) != (False, 0.0) for code in TABLE.class_codes if code not in touched)


def test_means_of_huge_scalars_overflow_like_numpy(tmp_path):
    """Two finite 1e308 for one class average to inf (np.mean overflows), which the AUC sweep takes as the top."""
    e = load_one(tmp_path, f"#A0001\n{AF},{AF},{SR}\n0,0,0\n1e308,1e308,-1e308\n")
    assert cell(e, AF) == (False, np.inf)
    assert cell(e, SR) == (False, -1e308)


def test_rows_of_different_lengths_score_as_the_organizers_when_every_scored_column_has_entries(tmp_path, capsys):
    # Trailing commas give binary and scalar rows longer than the classes: the extra entries are ignored.
    e = load_one(tmp_path, f"#A0001\n{AF},{SR}\n1,0,\n0.9,0.1,0.5,\n")
    assert cell(e, AF) == (True, 0.9) and cell(e, SR) == (False, 0.1)
    err = capsys.readouterr().err
    assert "A0001.csv: 2 classes, 3 binary and 4 scalar outputs" in err and "ignored" in err
    # A trailing class column of an unscored code without entries is never looked at.
    e = load_one(tmp_path, f"#A0001\n{AF},{SR},999999\n1,1\n0.9,0.8\n")
    assert cell(e, AF) == (True, 0.9) and cell(e, SR) == (True, 0.8)


@pytest.mark.parametrize("text", [
    f"#A0001\r\n{AF},{SR}\r\n1,t\r\n0.5,0.25\r\n",  # Windows
    f"#A0001\r{AF},{SR}\r1,t\r0.5,0.25",  # old Mac, no final newline
    f"#A0001\n{AF},{SR}\n1,t\n0.5,0.25\nignored,lines\n1,1\n",  # lines after the fourth
    f"A0001\n{AF},{SR}\n1,t\n0.5,0.25",  # no '#' before the record id
])
def test_output_lines(tmp_path, text):
    e = load_one(tmp_path, text)
    assert cell(e, AF) == (True, 0.5) and cell(e, SR) == (True, 0.25)


def test_empty_fourth_line_is_one_empty_scalar(tmp_path, capsys):
    e = load_one(tmp_path, f"#A0001\n{AF}\n1\n\n")
    assert cell(e, AF) == (True, 0.0)
    e = load_one(tmp_path, f"#A0001\n{AF},{SR}\n1,0\n\n")  # the second column lacks its scalar: malformed
    assert cell(e, AF) == (False, 0.0) and "column 2 ('426783006') has no scalar output" in capsys.readouterr().err


@pytest.mark.parametrize("header, codes", [
    ("#Dx: 164889003,426783006", ["164889003", "426783006"]),
    ("#Dx:  164889003 , 426783006 ,", ["164889003", "426783006", ""]),
    ("#Dx:164889003", []),  # no ': '
    ("#Dx:\t164889003", []),
    ("# Dx: 164889003", []),  # not '#Dx' at the start
    (" #Dx: 164889003", []),
    ("#dx: 164889003", []),
    ("#DX: 164889003", []),
    ("#Dx : 164889003", ["164889003"]),
    ("#Dxs: 164889003", ["164889003"]),  # any line starting with '#Dx'
    ("#Dx: 164889003: 426783006", ["164889003"]),  # only up to the next ': '
    ("#Dx: 164889003:426783006", ["164889003:426783006"]),
    ("#Dx: 164889003|426783006", ["164889003|426783006"]),  # '|' does not split labels
    ("#Dx: ", [""]),
    ("#Dx:", []),
    ("#Dx: 164889003\n#Dx: 426783006,164889003", ["164889003", "426783006", "164889003"]),  # every #Dx line
    ("#Dx: 164889003\n#Dx:\n#Dx: ", ["164889003", ""]),
    ("#Age: 50\n#Sex: Male", []),
])
def test_challenge_labels(header, codes):
    assert evaluation.challenge_labels(f"A0001 12 500 5000\n{header}\n") == codes


@pytest.mark.parametrize("header, positive", [
    ("#Dx: 164889003\r\n", [AF]),  # universal newlines
    ("#Dx: 426783006, 59118001\n", [SR, CRBBB]),
    ("#Dx: 164889003\n# Dx: 426783006\n#Dx:59118001\n", [AF]),
    ("#Dx: 55930002, \n", []),
    ("#Dx: 164889003|426783006\n", []),
])
def test_scorer_reads_labels_like_the_organizers_not_like_training(tmp_path, header, positive):
    e = load_one(tmp_path, f"#A0001\n{AF}\n0\n0\n", header=header)
    assert sorted(TABLE.class_codes[j] for j in np.flatnonzero(e.labels[0])) == sorted(positive)
    if "# Dx" in header:  # the training reader is lenient on purpose and sees all three
        assert parse_labels(header) == ["164889003", "426783006", "59118001"]


def test_label_files_are_top_level_hea_files_of_any_case(tmp_path):
    labels, outputs = tmp_path / "labels", tmp_path / "outputs"
    (labels / "sub.hea").mkdir(parents=True)  # a folder, not a file
    (labels / "nested").mkdir()
    outputs.mkdir()
    for name in ("b.hea", "A.HEA", "c.Hea", "g.b.hea", ".hidden.hea", ".H.HEA", "nested/d.hea", "e.hea.txt", "f.csv"):
        (labels / name).write_text("#Dx: 164889003\n")
    for name in ("b", "A", "c", "g.b"):
        (outputs / f"{name}.csv").write_text(f"#{name}\n{AF}\n1\n1\n")
    e = evaluation.load_evaluation(str(labels), str(outputs), TABLE)
    assert e.record_ids == ["A", "b", "c", "g.b"]  # sorted names: upper case first
    assert e.labels[:, TABLE.class_codes.index(AF)].all()
    # The output keeps the label file's root: A.HEA needs A.csv, not a.csv; a folder is no output file.
    (outputs / "A.csv").rename(outputs / "a.csv")
    (outputs / "c.csv").unlink()
    (outputs / "c.csv").mkdir()
    with pytest.raises(FileNotFoundError, match=r"2 output file\(s\) missing .*: A\.csv, c\.csv"):
        evaluation.find_challenge_files(str(labels), str(outputs))


# An adversarial label/output folder pair and its scores, worked out by hand below. It uses a four-class
# weights.csv whose non-numbers and infinities must read as NaN and drop out of the Challenge metric's sum.
ADVERSARIAL_WEIGHTS = f""",{AF},{SR},{CRBBB},{PVC}
{AF},1,0.5,x,0
{SR},0.5,1,0.25,0
{CRBBB},inf,0.25,1,0
{PVC},0,0,0,1
"""
ADVERSARIAL_RECORDS = {
    # name: (header lines, output file text)
    "A1.hea": ("#Dx: 164889003",
               f"#A1\n{AF},{SR},713427006,17338001\n1.0,0,0,False\n0.9,0.2,nan,0.4\n"),
    "B2.HEA": ("#Dx:164889003\n#Dx: 426783006",  # the first line gives no code
               f"#B2\n{AF} | {SR},{SR}\n1,+1\n0.8,1e400\n"),  # spaces around '|': the first column matches nothing
    "C3.hea": ("# Dx: 164889003\n#Dx: 59118001",
               f"#C3\n713427006,59118001|{AF}, {SR}\n0,t,T\n0.4,0.6,inf\n"),  # one column for CRBBB and AF
    "D4.hea": ("#Dx: 426783006,164889003: 59118001",  # the text after the second ': ' is dropped
               f"#D4\n{SR},{AF}\n1e0,0,\n0.7,0.3,\n"),  # trailing commas
    "E5.hea": ("#Dx: 55930002\n#Dx: ",  # unscored and empty: no scored label
               f"#E5\n{AF},{SR},713427006\nTrue,0,true\n0.5,-0,3e-1\n"),
    "F6.hea": ("#Dx: 713427006, 426783006",
               f"#F6\r\n713427006,{SR}\r\n1.00,1\r\n0.3,\x1c0.5\r\n"),  # '\x1c' makes the scalar no number
}


def write_adversarial_folders(root):
    """(labels, outputs, weights.csv) under root, with decoys the file walk must skip."""
    root = Path(root)
    labels, outputs = root / "labels", root / "outputs"
    (labels / "sub.hea").mkdir(parents=True)
    (labels / "nested").mkdir()
    outputs.mkdir()
    for name, (header, output) in ADVERSARIAL_RECORDS.items():
        (labels / name).write_text(f"{name[:2]} 12 500 5000\n#Age: 60\n{header}\n#Sex: Female\n", newline="")
        (outputs / f"{name[:2]}.csv").write_text(output, newline="")
    for decoy in (".G7.hea", "nested/H8.hea", "notes.txt"):
        (labels / decoy).write_text("#Dx: 164889003\n")
    weights = root / "weights.csv"
    weights.write_text(ADVERSARIAL_WEIGHTS)
    return labels, outputs, weights


def test_adversarial_folders_give_the_hand_computed_scores(tmp_path, capsys):
    labels, outputs, weights = write_adversarial_folders(tmp_path)
    table = load_scoring(str(weights))
    e = evaluation.load_evaluation(str(labels), str(outputs), table)
    assert e.record_ids == ["A1", "B2", "C3", "D4", "E5", "F6"]
    # Columns AF, SR, CRBBB, PVC.
    assert e.labels.astype(int).tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0],
                                             [0, 1, 1, 0]]
    assert e.binary_outputs.astype(int).tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 1, 0, 0],
                                                     [1, 0, 1, 0], [0, 1, 1, 0]]
    assert e.scalar_outputs.tolist() == [[0.9, 0.2, 0, 0.4], [0, 0, 0, 0], [0.6, 0, 0.5, 0], [0.3, 0.7, 0, 0],
                                         [0.5, 0, 0.3, 0], [0, 0, 0.3, 0]]
    assert np.isnan(table.weights[0, 2]) and np.isnan(table.weights[2, 0])  # 'x' and 'inf'

    (_, auroc, auprc, auroc_classes, auprc_classes, accuracy, f_measure, f_measure_classes,
     challenge) = evaluation.challenge_scores(e)
    # AF: positives .9, .3 against .6, .5, 0, 0: 6 of 8 pairs; sweep .9 TP, .6 FP, .5 FP, .3 TP: AUPRC .5 + .5 * .5.
    # SR: positives .7, 0, 0 against .2, 0, -0 (the zeros are one threshold): (3 + 2 * (2 * .5)) / 9;
    #     sweep .7 TP, .2 FP, 0 2 TP + 2 FP: AUPRC 1/3 * 1 + 2/3 * 3/6.
    # CRBBB: positives .5, .3 against one .3 and three 0: 7.5 / 8; sweep .5 TP, .3 TP + FP: .5 + .5 * 2/3.
    # PVC: no positive labels: NaN, left out of the means.
    assert auroc_classes[:3] == pytest.approx([0.75, 5 / 9, 0.9375], abs=1e-15)
    assert auprc_classes[:3] == pytest.approx([0.75, 2 / 3, 5 / 6], abs=1e-15)
    assert np.isnan(auroc_classes[3]) and np.isnan(auprc_classes[3])
    assert auroc == pytest.approx((0.75 + 5 / 9 + 0.9375) / 3, abs=1e-15)
    assert auprc == pytest.approx((0.75 + 2 / 3 + 5 / 6) / 3, abs=1e-15)
    # Records A1, B2 and F6 are exactly right.
    assert accuracy == 0.5
    # AF TP 1 FP 2 FN 1; SR TP 3 FP 1; CRBBB TP 2 FP 1; PVC never labelled nor output: NaN.
    assert f_measure_classes[:3] == pytest.approx([0.4, 6 / 7, 0.8], abs=1e-15) and np.isnan(f_measure_classes[3])
    assert f_measure == pytest.approx((0.4 + 6 / 7 + 0.8) / 3, abs=1e-15)
    # Challenge metric, each record's weight sum divided by the size of labels ∪ outputs, NaN weights left out:
    # observed A1 1, B2 1, C3 (nan + .25 + 1) / 3, D4 (.5 + 1) / 2, E5 0, F6 (1 + .25 + .25 + 1) / 2;
    # correct 1 + 1 + 1 + 1.5 + 0 + 1.25 = 5.75; always SR .25 + 1 + .125 + .75 + 0 + .625 = 2.75.
    observed = 1 + 1 + 1.25 / 3 + 0.75 + 0 + 1.25
    assert challenge == pytest.approx((observed - 2.75) / (5.75 - 2.75), abs=1e-15)

    assert evaluate_model.main([str(labels), str(outputs), str(tmp_path / "s.csv"), str(tmp_path / "c.csv"),
                                "--weights", str(weights)]) == 0
    assert (tmp_path / "s.csv").read_text() == ("AUROC,AUPRC,Accuracy,F-measure,Challenge metric\n"
                                               "0.748,0.750,0.500,0.686,0.556")
    assert (tmp_path / "c.csv").read_text() == (f"Classes,{AF},{SR},59118001|713427006,17338001|427172004\n"
                                               "AUROC,0.750,0.556,0.938,nan\nAUPRC,0.750,0.667,0.833,nan\n"
                                               "F-measure,0.400,0.857,0.800,nan")
    assert "D4.csv: 2 classes, 3 binary and 3 scalar outputs" in capsys.readouterr().err


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
