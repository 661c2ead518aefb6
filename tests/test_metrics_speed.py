"""The speed card (metrics.speed): busy time as the union of the structures' intervals, µs
per atom per step, structures per second, and the projection to the paper's 10,000 per
dimensionality."""

import numpy as np
import pandas as pd
import pytest

from metrics.speed import busy_seconds, devices_text, speed_card

CPU_RUN = {"engine": "ase", "host": {"cpu_model": "Example CPU"},
           "devices": [{"name": "cpu-0", "gpu": None, "threads": 1}, {"name": "cpu-1", "gpu": None, "threads": 1}]}


def test_busy_time_counts_overlapping_work_once():
    assert busy_seconds(np.array([0.0, 1.0, 5.0]), np.array([2.0, 3.0, 6.0])) == pytest.approx(4.0)
    assert busy_seconds(np.array([0.0, 0.5]), np.array([4.0, 1.0])) == pytest.approx(4.0)  # one inside another
    assert busy_seconds(np.array([]), np.array([])) == 0.0


def test_two_workers_in_parallel_halve_the_time_per_atom_step():
    # two workers side by side, each relaxing two 10-atom structures of 100 steps in 1 s each
    table = pd.DataFrame({"model": "m", "dimension": ["3D", "3D", "0D", "0D"], "natoms": [10, 10, 10, 10],
                          "steps": [100, 100, 100, 0], "wall_s": [1.0, 1.0, 1.0, 1.0],
                          "finished_at": [1001.0, 1001.0, 1002.0, 1002.0]})
    (row,) = speed_card(table, CPU_RUN).to_dict("records")
    assert row["busy_s"] == pytest.approx(2.0) and row["structures_per_s"] == pytest.approx(2.0)
    atom_steps = 10 * 100 * 3 + 10 * 1  # a structure with no step counts one
    assert row["us_per_atom_step"] == pytest.approx(2.0 / atom_steps * 1e6)
    per = 2.0 / atom_steps
    assert row["projected_h"] == pytest.approx(10_000 * (1000 * per + 505 * per) / 3600)  # 0D mean 505, 3D 1000
    assert row["projected_from"] == "0D,3D"
    assert row["devices"] == "CPU Example CPU; 2 workers × 1 thread" and row["engine"] == "ase"


def test_a_run_without_finish_times_has_no_speed_card():
    old = pd.DataFrame({"model": ["m"], "dimension": ["3D"], "natoms": [2], "steps": [5], "wall_s": [1.0]})
    assert speed_card(old, CPU_RUN).empty
    missing = old.assign(finished_at=np.nan)
    assert speed_card(missing, CPU_RUN).empty


def test_gpus_are_named_from_the_host_record():
    run = {"host": {"gpus": ["0, NVIDIA H200, 560.35"]}, "devices": [{"name": "gpu0-0", "gpu": "0", "threads": 4}]}
    assert devices_text(run) == "GPU 0 NVIDIA H200; 1 worker × 4 threads"


def test_the_workers_are_those_that_ran_not_the_slots():
    # the audit's case: two slots, one shard, so one worker ran; and a slot without threads
    ran = {**CPU_RUN, "workers": {"m": 1}}
    assert devices_text(ran, "m") == "CPU Example CPU; 1 worker × 1 thread"
    assert devices_text(ran, "other") == "CPU Example CPU; 2 workers × 1 thread"  # not recorded: the slots
    unknown = {"devices": [{"name": "task", "gpu": None, "threads": None}], "workers": {"m": 3}}
    assert devices_text(unknown, "m") == "CPU; 3 workers"
