"""benchmarks/bench_scale.py: the two schedulers it simulates, checked by hand on small cases."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_scale as bs  # noqa: E402

TWO = [bs.StageCost("a", "cpu", 1.0, "test"), bs.StageCost("b", "gpu", 1.0, "test")]


def test_barrier_and_streaming_by_hand():
    # 8 CPU workers, 1 GPU; videos of 10 s and 30 s. Barrier: stage a ends at 30 (both in parallel), then
    # the GPU runs 30 + 10 -> 70. Streaming: the 10 s video reaches the GPU at 10 and runs to 20, the 30 s
    # one arrives at 30 and runs to 60. The bound: GPU work 40 s, longest chain 60 s -> 60.
    d = np.array([10.0, 30.0])
    assert bs.run_barrier(d, TWO, 8) == (70.0, None)
    span, _ = bs.run_streaming(d, TWO, 8)
    assert span == 60.0 and bs.bound(d, TWO, 8) == 60.0


def test_first_window_and_the_appender():
    stages = TWO + [bs.StageCost("pack", "appender", 0.5, "test")]
    d = np.array([10.0, 30.0])
    span, first = bs.run_streaming(d, stages, 8)
    assert first == 25.0 and span == 75.0          # packs at 20-25 (10 s video), then 60-75
    span_b, first_b = bs.run_barrier(d, stages, 8)
    assert span_b == 90.0 and first_b == 85.0      # barrier: GPU ends at 70, then 70-85 and 85-90 (longest first)


@pytest.mark.parametrize("workers", [8, 32, 128])
def test_no_schedule_beats_the_bound_and_streaming_is_not_slower(workers):
    d = bs.corpus(300, seed=1)
    stages = bs.stage_costs()
    b = bs.bound(d, stages, workers)
    stream, first_s = bs.run_streaming(d, stages, workers)
    barrier, first_b = bs.run_barrier(d, stages, workers)
    assert b <= stream * (1 + 1e-9) and b <= barrier * (1 + 1e-9)
    assert stream <= barrier and first_s < first_b


def test_main_prints_the_table_and_writes_json(tmp_path, capsys):
    out = bs.main(["--videos", "200", "--workers", "8,128", "--json", str(tmp_path / "s.json")])
    text = capsys.readouterr().out
    assert "streaming" in text and "barrier" in text and (tmp_path / "s.json").exists()
    assert out["streaming:128"]["efficiency"] >= 0.9 and out["barrier:128"]["efficiency"] < out["streaming:128"]["efficiency"]


def test_todays_runner_streams_until_pack():
    stages = TWO + [bs.StageCost("pack", "appender", 0.5, "test")]
    d = np.array([10.0, 30.0])
    assert bs.run_pack_waits(d, stages, 8) == (80.0, 75.0)   # a, b stream to 60; pack 60-75, 75-80 (longest first)


def test_early_batches_hold_pack_until_the_gate_and_the_batch():
    # three 10 s videos, stages a (gate, cpu) then pack (appender, 1 s per s), batch 2: pack may not
    # start before every video is past a (at 10 s: 8 CPU workers), then takes two, then the last
    stages = [bs.StageCost("a", "cpu", 1.0, "t"), bs.StageCost("pack", "appender", 1.0, "t")]
    d = np.array([10.0, 10.0, 10.0])
    span, first = bs.run_streaming(d, stages, 8, batch=2, gate="a")
    assert (span, first) == (40.0, 20.0)
    assert bs.run_streaming(d, stages, 8) == (40.0, 20.0)          # the appender is the bottleneck either way
