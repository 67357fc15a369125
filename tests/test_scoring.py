"""The project's scoring tables: invariants always, and identity with the official CSV tables when present."""

import csv

import numpy as np
import pytest

from ecgmamba.scoring import ScoringTable, encode_labels, load_scoring

EQUIVALENT_2021 = {("733534002", "164909002"), ("713427006", "59118001"), ("284470004", "63593006"),
                   ("427172004", "17338001")}
SINUS_RHYTHM = "426783006"


def read_official_table(path):
    """(column names, weights) of an official weights.csv, parsed independently of ecgmamba."""
    with open(path) as f:
        rows = [[cell.strip() for cell in row] for row in csv.reader(f)]
    assert [row[0] for row in rows[1:]] == rows[0][1:]
    return rows[0][1:], np.array([[float(x) for x in row[1:]] for row in rows[1:]])


def read_dx_mapping(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    code_column = "SNOMEDCTCode" if "SNOMEDCTCode" in rows[0] else "SNOMED CT Code"
    return {row[code_column]: (row["Dx"], row["Abbreviation"]) for row in rows}


@pytest.mark.parametrize("which", ["2021", "2020"])
def test_table_invariants(which):
    table = load_scoring(which)
    assert isinstance(table, ScoringTable)
    w = table.weights
    assert w.dtype == np.float64 and w.shape == (table.num_classes, table.num_classes)
    assert np.array_equal(w, w.T)
    assert np.all(np.diag(w) == 1.0)
    off_diagonal = w[~np.eye(len(w), dtype=bool)]
    assert np.all((off_diagonal > 0) & (off_diagonal < 1))
    codes = [code for class_codes in table.classes for code in class_codes]
    assert len(codes) == len(set(codes))
    assert all(code.isdigit() for code in codes)
    assert table.classes[table.sinus_rhythm_index] == (SINUS_RHYTHM,)
    for class_codes, names, abbreviations in zip(table.classes, table.names, table.abbreviations):
        assert len(names) == len(abbreviations) == len(class_codes)
        assert all(names) and all(abbreviations)
    assert table.class_codes == ["|".join(c) for c in table.classes]
    assert len(set(table.class_abbreviations)) == table.num_classes


def test_2021_table():
    table = load_scoring("2021")
    assert table.num_classes == 26
    assert sum(len(c) for c in table.classes) == 30
    assert {c for c in table.classes if len(c) > 1} == EQUIVALENT_2021
    assert "733534002|164909002" in table.class_codes
    assert table.class_abbreviations[table.class_codes.index("713427006|59118001")] == "CRBBB|RBBB"
    assert table.names[table.class_codes.index("164889003")] == ("atrial fibrillation",)
    assert load_scoring(2021).class_codes == table.class_codes  # the year may be given as a number


def test_2020_table_merges_the_three_pairs_of_the_2020_organizers():
    table = load_scoring("2020")
    assert table.num_classes == 24
    assert sum(len(c) for c in table.classes) == 27
    assert {c for c in table.classes if len(c) > 1} == EQUIVALENT_2021 - {("733534002", "164909002")}
    assert "164909002" in table.class_codes and "733534002" not in table.code_to_index()


def test_2020_and_2021_agree_on_shared_classes():
    new, old = load_scoring("2021"), load_scoring("2020")
    shared = [c for c in old.class_codes if c in new.class_codes]
    assert len(shared) == 23  # all but left bundle branch block, merged with 733534002 in 2021
    i = [new.class_codes.index(c) for c in shared]
    j = [old.class_codes.index(c) for c in shared]
    assert np.array_equal(new.weights[np.ix_(i, i)], old.weights[np.ix_(j, j)])


def test_encode_labels():
    table = load_scoring("2021")
    index = table.code_to_index()
    labels = encode_labels([["59118001", "999999", " 426783006"], [], ["713427006", "59118001"], ["55930002"]], table)
    assert labels.dtype == bool and labels.shape == (4, 26)
    crbbb = table.class_codes.index("713427006|59118001")
    assert index["59118001"] == index["713427006"] == crbbb
    assert np.flatnonzero(labels[0]).tolist() == sorted([crbbb, table.sinus_rhythm_index])
    assert not labels[1].any() and not labels[3].any()
    assert np.flatnonzero(labels[2]).tolist() == [crbbb]
    assert encode_labels([], table).shape == (0, 26)


def write_weights(path, names, weights):
    lines = ["," + ",".join(names)]
    lines += [name + "," + ",".join(str(x) for x in row) for name, row in zip(names, weights)]
    path.write_text("\n".join(lines) + "\n")


def test_load_official_format_weights_file(tmp_path):
    names = ["164889003", "426783006", "713427006|59118001", "123"]
    weights = [[1, 0.5, 0.25, 0.1], [0.5, 1, 0.3, 0.2], [0.25, 0.3, 1, 0.4], [0.1, 0.2, 0.4, 1]]
    path = tmp_path / "weights.csv"
    write_weights(path, names, weights)
    table = load_scoring(str(path))
    assert table.classes == [("164889003",), ("426783006",), ("713427006", "59118001"), ("123",)]
    assert table.sinus_rhythm_index == 1
    assert np.array_equal(table.weights, np.array(weights, dtype=float))
    assert table.abbreviations[2] == ("CRBBB", "RBBB")  # borrowed from our own tables
    assert table.abbreviations[3] == ("123",)  # unknown code: shown as itself


@pytest.mark.parametrize("content, message", [
    (",426783006,1\n426783006,1,0.5\n", "not square"),
    (",426783006,1\n426783006,1,0.5\n1,0.5,1,0\n", "row 1 has 3 entries"),  # the organizers ignore the extra
    (",426783006,1\n426783006,1,0.5\n2,0.5,1\n", "row names differ"),
    (",164889003\n164889003,1\n", "sinus rhythm"),
    (",426783006|1,2\n426783006|1,1,0.5\n2,0.5,1\n", "426783006 .on its own."),
    (",426783006,1|2,2\n426783006,1,0.5,0.5\n1|2,0.5,1,0\n2,0.5,0,1\n", "more than one class"),
    ("", "empty"),
])
def test_bad_weights_file(tmp_path, content, message):
    path = tmp_path / "weights.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_scoring(str(path))
    assert str(path) in str(error.value)


def test_weights_that_are_not_finite_numbers_read_as_nan(tmp_path):
    """The organizers' load_table: anything float() does not read as a finite number is NaN (nansum skips it)."""
    path = tmp_path / "weights.csv"
    path.write_text(",426783006,1,2\n426783006,1,x,\n1,inf,1,-inf\n2,1e400,nan, 0.5 \n")
    weights = load_scoring(str(path)).weights
    assert np.isnan(weights[[0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]]).all()
    assert weights[0, 0] == weights[1, 1] == 1.0 and weights[2, 2] == 0.5


def test_weight_class_codes_are_split_at_bars_without_stripping(tmp_path):
    path = tmp_path / "weights.csv"
    path.write_text(",426783006, 164889003 | 2 ,3|3\n426783006,1,0,0\n164889003 | 2,0,1,0\n3,0,0,1\n")
    table = load_scoring(str(path))
    assert table.classes == [("426783006",), ("164889003 ", " 2"), ("3",)]  # spaces kept; a repeated code once
    assert table.class_codes == ["426783006", "164889003 | 2", "3"]


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="2021"):
        load_scoring(str(tmp_path / "nope.csv"))


def test_2021_table_is_the_official_one(challenge_dir):
    table = load_scoring("2021")
    columns, weights = read_official_table(challenge_dir / "2021" / "weights.csv")
    assert table.class_codes == columns
    assert np.array_equal(table.weights, weights)
    abbreviation_columns, abbreviation_weights = read_official_table(
        challenge_dir / "2021" / "weights_abbreviations.csv")
    assert table.class_abbreviations == abbreviation_columns
    assert np.array_equal(table.weights, abbreviation_weights)
    mapping = read_dx_mapping(challenge_dir / "2021" / "dx_mapping_scored.csv")
    assert sorted(mapping) == sorted(code for codes in table.classes for code in codes)
    for codes, names, abbreviations in zip(table.classes, table.names, table.abbreviations):
        assert [mapping[code] for code in codes] == list(zip(names, abbreviations))
    # The official file read as a path gives the same table.
    from_csv = load_scoring(str(challenge_dir / "2021" / "weights.csv"))
    assert from_csv.classes == table.classes and np.array_equal(from_csv.weights, table.weights)
    assert from_csv.abbreviations == table.abbreviations


def test_2020_table_is_the_official_one_merged(challenge_dir):
    table = load_scoring("2020")
    columns, weights = read_official_table(challenge_dir / "2020" / "weights.csv")
    assert len(columns) == 27
    index = table.code_to_index()
    assert sorted(index) == sorted(columns)
    for a, code_a in enumerate(columns):
        for b, code_b in enumerate(columns):
            assert table.weights[index[code_a], index[code_b]] == weights[a, b]
    # The representative (first) code keeps its place in the official order.
    assert [codes[0] for codes in table.classes] == [c for c in columns if c not in ("59118001", "63593006",
                                                                                       "17338001")]
    mapping = read_dx_mapping(challenge_dir / "2020" / "dx_mapping_scored.csv")
    for codes, names, abbreviations in zip(table.classes, table.names, table.abbreviations):
        assert [mapping[code] for code in codes] == list(zip(names, abbreviations))
