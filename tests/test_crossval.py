"""Cross-validation end to end on small synthetic folders: the table, resuming, both splits, clear errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ecgmamba.crossval import CrossValidationError, make_folds, read_dataset
from ecgmamba.scoring import load_scoring
from ecgmamba.synthetic import generate_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = {"d_model": 16, "depth": 1, "d_state": 4, "stem_channels": 8, "num_samples": 512}
ENV = dict(os.environ, ECGMAMBA_PRESET="small", ECGMAMBA_EPOCHS="1", ECGMAMBA_BATCH_SIZE="8",
           ECGMAMBA_MODEL=json.dumps(TINY_MODEL), ECGMAMBA_PROGRESS="0", ECGMAMBA_CACHE_WORKERS="1",
           ECGMAMBA_DEVICE="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


def crossval(*args):
    return subprocess.run([sys.executable, "-m", "ecgmamba.crossval", *args, "--no-progress"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cv_data")
    generate_dataset(str(directory), 40, seed=5, fs="mixed")
    return str(directory)


def test_two_folds_one_seed_write_the_table_and_a_rerun_resumes(tmp_path, data_dir):
    out = tmp_path / "cv"
    result = crossval(data_dir, str(out), "--folds", "2", "--seeds", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("training on") == 2
    table = (out / "crossval.md").read_text()
    for leads in (12, 6, 4, 3, 2):
        assert f"| ecgmamba, {leads} leads |" in table
    assert "ECG-Mamba-V2 (published" in table and "| NSR |" in table
    summary = json.loads((out / "crossval.json").read_text())
    assert summary["runs"] == 2
    auroc_mean, auroc_std = summary["lead_sets"]["12 leads"]["AUROC"]
    folds = [json.loads((out / "seed0" / f"fold{k}" / "scores.json").read_text()) for k in (1, 2)]
    per_fold = [f["lead_sets"]["12"]["AUROC"] for f in folds]
    assert auroc_mean == pytest.approx(np.mean(per_fold)) and auroc_std == pytest.approx(np.std(per_fold, ddof=1))
    assert sum(f["test_records"] for f in folds) == 40  # every record held out exactly once
    plan = json.loads((out / "crossval_plan.json").read_text())
    held_out = plan["test_records"]["seed0_fold0"] + plan["test_records"]["seed0_fold1"]
    assert sorted(held_out) == sorted(f[:-4] for f in os.listdir(data_dir) if f.endswith(".hea"))
    assert (out / "crossval.csv").read_text().startswith("row,AUROC mean,AUROC std")
    assert not (out / "seed0" / "fold1" / "model" / "cache").exists()  # the training's work files are gone

    (out / "seed0" / "fold2" / "scores.json").unlink()  # as if the run had been killed during fold 2
    again = crossval(data_dir, str(out), "--folds", "2", "--seeds", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("training on") == 1 and "fold 2: training on" in again.stderr


def test_leave_one_source_out(tmp_path):
    data = tmp_path / "data"
    generate_dataset(str(data / "ptbxl"), 12, seed=1, prefix="HR")
    generate_dataset(str(data / "georgia"), 12, seed=2, prefix="E")
    table = load_scoring("2021")
    paths, ids, labels, sources = read_dataset(str(data), table)
    plan, names = make_folds(labels, sources, "source", 5, 1, table)
    assert sorted(names.values()) == ["Georgia", "PTB-XL"]
    for (_, k), (train, test) in plan.items():
        assert {sources[i] for i in test} == {names[k]} and names[k] not in {sources[i] for i in train}
    result = crossval(str(data), str(tmp_path / "cv"), "--split", "source", "--seeds", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Georgia: training on 12, testing on 12 records" in result.stderr
    assert "source split" in (tmp_path / "cv" / "crossval.md").read_text()


def test_too_small_folders_and_scarce_classes_are_named(tmp_path, data_dir):
    table = load_scoring("2021")
    _, _, labels, sources = read_dataset(data_dir, table)
    with pytest.raises(CrossValidationError, match="40 usable records cannot make 50 folds"):
        make_folds(labels, sources, "stratified", 50, 1, table)
    positives = labels.sum(0)
    rare = int(np.flatnonzero(positives > 0)[np.argmin(positives[positives > 0])])
    folds = int(positives[rare]) + 1
    with pytest.raises(CrossValidationError, match=table.class_abbreviations[rare].replace("|", r"\|")):
        make_folds(labels, sources, "stratified", folds, 1, table)
    with pytest.raises(CrossValidationError, match="at least 2 source databases"):
        make_folds(labels, sources, "source", 5, 1, table)
    result = crossval(data_dir, str(tmp_path / "cv"), "--folds", "50")
    assert result.returncode != 0 and "error: 40 usable records cannot make 50 folds" in result.stderr
