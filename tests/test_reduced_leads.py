import types

import numpy as np
import pytest
import scipy.io

import helper_code
from ecgmamba.records import LEAD_SETS, TWELVE_LEADS, parse_labels
from ecgmamba.reduced_leads import format_table, reduce_header, score_lead_sets, write_reduced_copy
from ecgmamba.scoring import encode_labels, load_scoring
from ecgmamba.synthetic import generate_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    generate_dataset(str(directory), 12, seed=3)
    return directory


def oracle_team_code(seen):
    """A contract-satisfying stand-in: reads the answer from the header, records what it was given."""
    table = load_scoring("2021")

    def load_model(model_directory, leads):
        return {"leads": tuple(leads)}

    def run_model(model, header, recording):
        leads = helper_code.get_leads(header)
        assert tuple(leads) == model["leads"] and recording.shape[0] == len(leads)
        seen.add(tuple(leads))
        truth = encode_labels([parse_labels(header)], table)[0]
        return table.class_codes, truth.astype(int).tolist(), truth.astype(float).tolist()

    return types.SimpleNamespace(load_model=load_model, run_model=run_model)


def test_reduce_header_keeps_chosen_leads_and_comments():
    text = "R1 3 500 10\nR1.mat 16 1000/mV 16 0 1 0 0 I\nR1.mat 16 1000/mV 16 0 2 0 0 II\n" \
           "R1.mat 16 1000/mV 16 0 3 0 0 V2\n#Dx: 164889003\n"
    reduced = reduce_header(text, ("I", "V2"))
    assert reduced.splitlines() == ["R1 2 500 10", "R1.mat 16 1000/mV 16 0 1 0 0 I",
                                    "R1.mat 16 1000/mV 16 0 3 0 0 V2", "#Dx: 164889003"]
    with pytest.raises(ValueError, match="R1.hea: leads \\['aVR'\\] not in header"):
        reduce_header(text, ("I", "aVR"), "R1.hea")


@pytest.mark.parametrize("leads", LEAD_SETS)
def test_reduced_copy_has_only_those_leads(tmp_path, data_dir, leads):
    assert write_reduced_copy(str(data_dir), str(tmp_path), leads) == []
    headers, recordings = helper_code.find_challenge_files(str(tmp_path))
    assert len(headers) == 12
    for header_file, recording_file in zip(headers, recordings):
        header = helper_code.load_header(header_file)
        assert helper_code.get_leads(header) == leads
        original_header = helper_code.load_header(str(data_dir / header_file.split("/")[-1]))
        original = scipy.io.loadmat(str(data_dir / recording_file.split("/")[-1]))["val"]
        reduced = helper_code.load_recording(recording_file)
        assert reduced.dtype == np.int16
        np.testing.assert_array_equal(reduced, original[[TWELVE_LEADS.index(lead) for lead in leads]])
        assert helper_code.get_labels(header) == helper_code.get_labels(original_header)


def test_score_lead_sets_runs_every_lead_set(tmp_path, data_dir):
    seen = set()
    rows = score_lead_sets(oracle_team_code(seen), "unused-model-dir", str(data_dir), str(tmp_path),
                           progress=False)
    assert [leads for leads, _ in rows] == list(LEAD_SETS)
    assert seen == set(LEAD_SETS)
    for _, scores in rows:  # the oracle is perfect on every lead set
        assert scores["Challenge metric"] == pytest.approx(1.0)
        assert scores["Accuracy"] == pytest.approx(1.0)
        assert scores["AUROC"] == pytest.approx(1.0)
    table = format_table(rows)
    assert table.count("\n") == len(LEAD_SETS) + 1 and "2: I,II" in table


def test_reduce_header_keeps_lines_before_the_record_line_and_first_of_a_duplicated_lead():
    text = "# made by hand\n\nR1 3 500 10\nR1.mat 16 1000/mV 16 0 1 0 0 I\nR1.mat 16 1000/mV 16 0 2 0 0 I\n" \
           "R1.mat 16 1000/mV 16 0 3 0 0 II\n#Dx: 164889003\n"
    assert reduce_header(text, ("I", "II")).splitlines() == [
        "# made by hand", "", "R1 2 500 10", "R1.mat 16 1000/mV 16 0 1 0 0 I", "R1.mat 16 1000/mV 16 0 3 0 0 II",
        "#Dx: 164889003"]
    with pytest.raises(ValueError, match="no record line"):
        reduce_header("# only a comment\n", ("I",), "R2.hea")


def test_reduced_copy_walks_per_database_folders(tmp_path, data_dir):
    nested = tmp_path / "nested"
    for i, name in enumerate(sorted(p.name for p in data_dir.iterdir())):
        folder = nested / ("g1" if i < 10 else "g2")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes((data_dir / name).read_bytes())
    assert write_reduced_copy(str(nested), str(tmp_path / "out"), ("I", "II")) == []
    assert len(helper_code.find_challenge_files(str(tmp_path / "out"))[0]) == 12


def test_command_line_names_a_missing_folder(tmp_path, capsys):
    from ecgmamba.reduced_leads import main

    with pytest.raises(SystemExit) as exit:
        main([str(tmp_path / "no-model"), str(tmp_path)])
    assert exit.value.code == 2 and "no-model: no such folder" in capsys.readouterr().err


def test_reduced_copy_reports_a_record_name_found_twice(tmp_path, data_dir):
    nested = tmp_path / "nested"
    for folder in ("g1", "g2"):
        (nested / folder).mkdir(parents=True)
        for path in sorted(data_dir.iterdir())[:2]:  # the same record in both folders
            (nested / folder / path.name).write_bytes(path.read_bytes())
    problems = write_reduced_copy(str(nested), str(tmp_path / "out"), ("I", "II"))
    assert len(problems) == 1 and "already taken by" in problems[0] and "g2" in problems[0]
    assert len(helper_code.find_challenge_files(str(tmp_path / "out"))[0]) == 1
