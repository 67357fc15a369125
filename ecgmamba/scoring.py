"""The Challenge's scored classes and Challenge-metric weights, as the project's own data.

The organizers publish the scoring definition as CSV tables beside their evaluation code. We carry our own
copy in JSON (ecgmamba/data/scoring_2021.json, scoring_2020.json) so that training, inference and scoring
all agree on one class order without needing those files. A class is a tuple of SNOMED CT codes the
organizers score as the same diagnosis (e.g. complete right bundle branch block 713427006 and right bundle
branch block 59118001); a record is positive for the class if it carries any of them.

2020 note: the 2020 weights.csv lists 27 codes separately and the 2020 scoring code merged three pairs
(first code as representative); scoring_2020.json stores those merged classes the 2021 way, codes joined.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
SINUS_RHYTHM = "426783006"


@dataclass
class ScoringTable:
    classes: list  # list[tuple[str, ...]]: equivalent SNOMED CT codes per class, in weight-matrix order
    names: list  # list[tuple[str, ...]]: diagnosis name of each code
    abbreviations: list  # list[tuple[str, ...]]: abbreviation of each code (e.g. ('CRBBB', 'RBBB'))
    weights: np.ndarray  # float64 (C, C): credit for labelling class i as class j
    sinus_rhythm_index: int  # the class an always-"normal" classifier outputs

    @property
    def class_codes(self):
        """'|'-joined codes per class, as the organizers write them in weights.csv."""
        return ["|".join(codes) for codes in self.classes]

    @property
    def class_abbreviations(self):
        return ["|".join(abbreviations) for abbreviations in self.abbreviations]

    @property
    def num_classes(self):
        return len(self.classes)

    def code_to_index(self):
        """Every scored code -> its class index (equivalent codes share an index)."""
        return {code: index for index, codes in enumerate(self.classes) for code in codes}


def load_scoring(which="2021"):
    """The scoring table: "2021", "2020", or a path to an official-format weights.csv ('|' joins equivalents)."""
    which = str(which)
    if which in ("2021", "2020"):
        return _load_json(DATA_DIR / f"scoring_{which}.json")
    path = Path(which)
    if not path.is_file():
        raise FileNotFoundError(f"weights: expected '2021', '2020' or a weights.csv file; {path} does not exist")
    if path.suffix.lower() == ".json":
        return _load_json(path)
    return _load_weights_csv(path)


def encode_labels(code_lists, table):
    """One-hot (N, C) bool: a class is positive if any of its codes is present; unscored codes are ignored."""
    index = table.code_to_index()
    labels = np.zeros((len(code_lists), table.num_classes), dtype=bool)
    for i, codes in enumerate(code_lists):
        for code in codes:
            j = index.get(str(code).strip())
            if j is not None:
                labels[i, j] = True
    return labels


def _load_json(path):
    with open(path) as f:
        data = json.load(f)
    try:
        classes = [tuple(str(code) for code in entry["codes"]) for entry in data["classes"]]
        names = [tuple(entry["names"]) for entry in data["classes"]]
        abbreviations = [tuple(entry["abbreviations"]) for entry in data["classes"]]
        weights = np.asarray(data["weights"], dtype=np.float64)
        sinus_rhythm = str(data["sinus_rhythm"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a scoring table ({error!r})") from error
    return _checked_table(path, classes, names, abbreviations, weights, sinus_rhythm)


def _load_weights_csv(path):
    """An official-format weights.csv: a square table whose row and column names are the classes.

    Read like the organizers' load_table: an entry that is not a finite number (text, empty, nan, inf)
    becomes NaN, which the Challenge metric's nansum then leaves out.
    """
    with open(path) as f:
        rows = [[cell.strip() for cell in line.split(",")] for line in f if line.strip()]
    if len(rows) < 2:
        raise ValueError(f"{path}: the weight table is empty")
    header = rows[0][1:]
    uneven = [row for row in rows[1:] if len(row) != len(header) + 1]
    if uneven or len(rows) - 1 != len(header):
        detail = f"; row {uneven[0][0]} has {len(uneven[0]) - 1} entries" if uneven else ""
        raise ValueError(f"{path}: the weight table is not square ({len(rows) - 1} rows, {len(header)} columns"
                         f"{detail})")
    column_classes = [frozenset(name.split("|")) for name in header]
    row_classes = [frozenset(row[0].split("|")) for row in rows[1:]]
    if row_classes != column_classes:
        raise ValueError(f"{path}: row names differ from column names")
    weights = np.array([[_finite_or_nan(cell) for cell in row[1:]] for row in rows[1:]], dtype=np.float64)
    # Codes are split at '|' without stripping (the organizers' sets), a code repeated in a class counts once.
    classes = [tuple(dict.fromkeys(name.split("|"))) for name in header]

    # Names and abbreviations are not in weights.csv; borrow them from our own tables where the code is known.
    known = {}
    for year in ("2020", "2021"):
        table = _load_json(DATA_DIR / f"scoring_{year}.json")
        for codes, names, abbreviations in zip(table.classes, table.names, table.abbreviations):
            known.update({code: (name, abbr) for code, name, abbr in zip(codes, names, abbreviations)})
    names = [tuple(known.get(code, (code, code))[0] for code in codes) for codes in classes]
    abbreviations = [tuple(known.get(code, (code, code))[1] for code in codes) for codes in classes]
    return _checked_table(path, classes, names, abbreviations, weights, SINUS_RHYTHM)


def _checked_table(path, classes, names, abbreviations, weights, sinus_rhythm):
    num_classes = len(classes)
    if weights.shape != (num_classes, num_classes):
        raise ValueError(f"{path}: weights have shape {weights.shape}, expected ({num_classes}, {num_classes})")
    if any(len(n) != len(c) or len(a) != len(c) for c, n, a in zip(classes, names, abbreviations)):
        raise ValueError(f"{path}: every class needs one name and one abbreviation per code")
    codes = [code for class_codes in classes for code in class_codes]
    if len(set(codes)) != len(codes):
        raise ValueError(f"{path}: a code appears in more than one class")
    # The organizers look for a class that is sinus rhythm alone (their classes.index({'426783006'})).
    sinus = [i for i, class_codes in enumerate(classes) if set(class_codes) == {sinus_rhythm}]
    if not sinus:
        raise ValueError(f"{path}: the sinus rhythm class {sinus_rhythm} (on its own) is not among the scored "
                         "classes")
    return ScoringTable(classes, names, abbreviations, weights, sinus[0])


def _finite_or_nan(cell):
    try:
        value = float(cell)
    except ValueError:
        return float("nan")
    return value if np.isfinite(value) else float("nan")
