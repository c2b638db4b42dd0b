"""Tile choice (baton_fast.tuning) through the attention launcher's picker, with the GPU mocked on CPU.

The picker (``kernels.rope_attention._pick_config``) reads q's device, dtype and shape only, so a stand-in
q on a "cuda" device with a mocked compute capability walks the GPU path; ``tuning.benchmark`` (the only
code that times, launches, allocates and synchronises) is replaced by a recorder.
"""
import json
import types

import pytest
import torch

import baton_fast as bf
from baton_fast import tuning
from baton_fast.kernels import rope_attention
from baton_fast.kernels.rope_attention import TUNED_FLAGS, shipped_configs

FLAGS = dict({name: False for name in TUNED_FLAGS}, ROTATE_Q=True, HAS_KLENS=True)  # fused family
CANDIDATES = shipped_configs(9, 128, "fused")


@pytest.fixture(autouse=True)
def gpu_stand_in(monkeypatch):
    """A CUDA machine (sm_90) as far as the picker can tell; not capturing; no disk cache; empty memory."""
    state = types.SimpleNamespace(capturing=False, timed=[], times={})

    def benchmark(launch):  # the config launch() runs is the last one recorded
        launch()
        return state.times[state.timed[-1]]

    monkeypatch.setattr(tuning, "benchmark", benchmark)
    monkeypatch.delenv(tuning.CACHE_ENV, raising=False)
    monkeypatch.setattr(rope_attention, "_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state.capturing)
    tuning.clear()
    yield state
    tuning.clear()


def fake_q(n_q=1000, n_k=1000, heads=8, kv_heads=8, dtype=torch.bfloat16):
    q = types.SimpleNamespace(device=torch.device("cuda"), dtype=dtype, shape=(2, n_q, heads, 128))
    k = types.SimpleNamespace(shape=(2, n_k, kv_heads, 128))
    return q, k


SECOND_FASTEST = {CANDIDATES[0]: 2.0, CANDIDATES[1]: 1.0}


def pick(state, q, k, times):
    """The launcher's picker for a stand-in (q, k); timing a config records it and returns ``times[config]``."""
    state.times = times
    return rope_attention._pick_config(q, k, FLAGS, state.timed.append)


def test_capture_never_times_and_uses_the_first_shipped_config(gpu_stand_in):
    gpu_stand_in.capturing = True
    q, k = fake_q()
    assert pick(gpu_stand_in, q, k, SECOND_FASTEST) == CANDIDATES[0]
    assert gpu_stand_in.timed == [] and tuning.cached() == {}


def test_first_use_outside_capture_times_each_candidate_once_then_capture_uses_the_choice(gpu_stand_in):
    q, k = fake_q()
    assert pick(gpu_stand_in, q, k, SECOND_FASTEST) == CANDIDATES[1]
    assert gpu_stand_in.timed == list(CANDIDATES)
    q_same_bucket, k_same_bucket = fake_q(n_q=900, n_k=1023)
    assert pick(gpu_stand_in, q_same_bucket, k_same_bucket, SECOND_FASTEST) == CANDIDATES[1]
    gpu_stand_in.capturing = True
    assert pick(gpu_stand_in, q, k, {}) == CANDIDATES[1]
    assert gpu_stand_in.timed == list(CANDIDATES)  # nothing timed after the first call


@pytest.mark.parametrize("change", [dict(n_q=2000), dict(n_k=100), dict(heads=16, kv_heads=16),
                                    dict(kv_heads=2), dict(dtype=torch.float16)])
def test_each_key_part_gets_its_own_choice(gpu_stand_in, change):
    pick(gpu_stand_in, *fake_q(), SECOND_FASTEST)
    pick(gpu_stand_in, *fake_q(**change), SECOND_FASTEST)
    assert len(tuning.cached()) == 2 and gpu_stand_in.timed == 2 * list(CANDIDATES)


def test_disk_cache_is_written_and_read_by_a_fresh_process_state(gpu_stand_in, monkeypatch, tmp_path):
    path = tmp_path / "tune" / "cache.json"
    monkeypatch.setenv(tuning.CACHE_ENV, str(path))
    q, k = fake_q()
    pick(gpu_stand_in, q, k, SECOND_FASTEST)
    data = json.loads(path.read_text())
    assert data["version"] == tuning.CACHE_VERSION and list(data["configs"].values()) == [list(CANDIDATES[1])]
    (name,) = data["configs"]
    assert name.startswith("sm_90 nq1024 nk1024 d128 bfloat16 bh16 g1 ")
    tuning.clear()  # as in a new process: only the file knows the choice
    gpu_stand_in.capturing = True
    assert pick(gpu_stand_in, q, k, {}) == CANDIDATES[1]
    assert gpu_stand_in.timed == list(CANDIDATES)


def test_a_stale_or_corrupt_disk_cache(gpu_stand_in, monkeypatch, tmp_path):
    path = tmp_path / "cache.json"
    monkeypatch.setenv(tuning.CACHE_ENV, str(path))
    q, k = fake_q()
    name = str(tuning.attention_key("sm_90", 1000, 1000, 128, torch.bfloat16, FLAGS, 16, 1))
    path.write_text(json.dumps({"version": 1, "configs": {name: [999, 999, 1, 1]}}))  # no longer shipped
    gpu_stand_in.capturing = True
    assert pick(gpu_stand_in, q, k, {}) == CANDIDATES[0]
    path.write_text("{not json")
    tuning.clear()
    with pytest.raises(ValueError, match="BATON_FAST_TUNE_CACHE: expected a baton-fast tuning cache"):
        pick(gpu_stand_in, q, k, {})


def test_tune_is_the_warm_up_before_capture(gpu_stand_in):
    q, k = fake_q()
    q2, k2 = fake_q(n_q=5000)
    chosen = bf.tune(lambda: [pick(gpu_stand_in, q, k, SECOND_FASTEST), pick(gpu_stand_in, q2, k2, SECOND_FASTEST)])
    assert sorted(chosen.values()) == [CANDIDATES[1]] * 2 and set(chosen) == set(tuning.cached())
    gpu_stand_in.capturing = True
    with pytest.raises(RuntimeError, match="tune: called while a CUDA graph is being captured"):
        bf.tune(lambda: None)


def test_layout_tile_stats_counts_with_the_config_the_call_launches(monkeypatch):
    """Under the interpreter the call launches INTERPRETER_CONFIG: a different one shows in the stats."""
    monkeypatch.undo()  # the real CPU machine, interpreter
    monkeypatch.setattr(rope_attention, "INTERPRETER_CONFIG", (32, 16, 1, 1))
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 1, 40, 1, 32, generator=g)
    groups = torch.tensor([[1] * 20 + [2] * 20])
    stats = bf.layout_tile_stats(q, k, v, rotate_q=False, rotate_k=False, q_groups=groups, k_groups=groups)
    assert (stats["block_m"], stats["block_n"]) == (32, 16)
    # query tile 0 (rows 0-31, groups 1 and 2) visits all 3 key tiles; tile 1 (group 2) skips key tile 0
    assert (stats["visited"], stats["skipped"]) == (5, 1)
