"""The LM stability study (``benchmarks/lm_stability/``): its pieces against independent
expectations (the corpus split, StableAdamW against its formula written out, the
cap-binding detector against the uncapped norm, the spike definition), and the quick
sweep end to end.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import relax_optax
from benchmarks._common import json_safe, lr_sensitivity

sklearn = pytest.importorskip("sklearn")  # the benchmark's "bench" extra
from benchmarks.lm_stability import (  # noqa: E402
  configs,
  data,
  optimizers,
  per_component,
  renaming,
  spikes,
  step_time,
  sweep,
)


def test_corpus_is_split_by_file_and_excludes_tests(tmp_path):
  files = {
    "a.py": b"A",
    "b.py": b"B",
    "pkg/c.py": b"C",
    "test/t.py": b"T",
    "test_x.py": b"X",
    "site-packages/s.py": b"S",
    "idlelib/idle_test/i.py": b"I",
    "d.txt": b"D",
  }
  for name, text in files.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(text)
  corpus = data.stdlib_corpus(val_every=2, root=str(tmp_path))
  # Sorted: a.py, b.py, pkg/c.py; every 2nd file is validation.
  assert corpus.train.tobytes() == b"A\0C"
  assert corpus.val.tobytes() == b"B"
  assert corpus.info["files"] == 3


def test_stdlib_corpus_is_large_and_deterministic():
  corpus = data.stdlib_corpus()
  assert corpus.info["files"] > 100 and corpus.val.size > 100_000
  assert corpus.train.dtype == np.uint8
  assert corpus.info == data.stdlib_corpus().info


def test_stable_adamw_matches_the_formula():
  g = {"a": jnp.array([0.3, -2.0, 0.5]), "b": jnp.array([[1e-3, 4.0]])}
  tx = optimizers.scale_by_stable_adamw(b1=0.9, b2=0.95, eps=1e-8)
  state = tx.init(g)
  out, _ = tx.update(g, state)
  for k, x in g.items():
    x = np.asarray(x, np.float64)
    m_hat, v_hat = x, x**2  # one step: the bias-corrected moments are g and g²
    adam = m_hat / (np.sqrt(v_hat) + 1e-8)
    rms = np.sqrt(np.mean(x**2 / np.maximum(v_hat, 1e-16)))
    np.testing.assert_allclose(out[k], adam / max(1.0, rms), rtol=1e-5)


@pytest.mark.parametrize(
  ("cap", "mode", "formula"),
  [
    ("global", "global", "lorentz"),
    ("per_param", "per_param", "lorentz"),
    ("per_component", "per_component", "lorentz"),
    ("per_param_reference", "per_param", "reference"),
    ("per_component_tanh", "per_component", "tanh"),
  ],
)
def test_binding_reads_the_uncapped_norm_off_the_capped_update(cap, mode, formula):
  rng = np.random.default_rng(0)
  c = 1.0
  scale_fn = jax.jit(lambda u: relax_optax.relativistic_scale(u, c, mode=mode, formula=formula))
  binding = jax.jit(lambda v: optimizers.binding(cap, v, c))
  for scale in (0.05, 0.6, 0.69, 0.72, 1.1, 3.0):
    u = {
      "a": jnp.asarray(rng.normal(size=4) * scale, jnp.float32),
      "b": jnp.asarray(rng.normal(size=(2, 3)) * scale / 2, jnp.float32),
    }
    v = scale_fn(u)
    if cap == "global":
      expect = float(np.sqrt(sum(np.sum(np.square(x)) for x in u.values())) > c)
    elif cap.startswith("per_component"):
      expect = np.mean(np.abs(np.concatenate([np.ravel(x) for x in u.values()])) > c)
    else:
      expect = np.mean([np.linalg.norm(np.ravel(x)) > c for x in u.values()])
    assert float(binding(v)) == pytest.approx(expect), scale
  hard = optax.clip_by_global_norm(c).update({"a": jnp.array([3.0, 4.0])}, None)[0]
  assert float(optimizers.binding("hard_global", hard, c)) == 1.0
  # optax.clip caps each entry: 2 of the 4 entries exceed c.
  clipped = optax.clip(c).update({"a": jnp.array([0.5, -3.0, 1.5, 0.99])}, None)[0]
  assert float(optimizers.binding("hard_component", clipped, c)) == 0.5


def test_adam_atan2_matches_the_formula():
  g1 = {"w": jnp.array([0.3, -2.0, 0.0, 1e-15])}
  g2 = {"w": jnp.array([0.1, 4.0, 0.0, -1e-15])}
  tx = optimizers.scale_by_adam_atan2(b1=0.9, b2=0.95, a=1.27, b=2.0)
  state = tx.init(g1)
  _, state = tx.update(g1, state)
  out, _ = tx.update(g2, state)
  x1, x2 = np.asarray(g1["w"], np.float64), np.asarray(g2["w"], np.float64)
  m = (0.9 * 0.1 * x1 + 0.1 * x2) / (1 - 0.9**2)
  v = (0.95 * 0.05 * x1**2 + 0.05 * x2**2) / (1 - 0.95**2)
  expect = 1.27 * np.arctan2(m, 2.0 * np.sqrt(v))
  np.testing.assert_allclose(out["w"], expect, rtol=1e-5, atol=1e-30)
  # Bounded by a·π/2 whatever the gradient; zero where the moments are zero, not NaN.
  assert np.all(np.abs(np.asarray(out["w"])) <= 1.27 * np.pi / 2)
  assert float(out["w"][2]) == 0.0


def _fake_part(name, finals, kinds):
  """A study result with the given final losses (arm -> (points, seeds))."""
  arms = {}
  for arm, final in finals.items():
    final = np.asarray(final, float)
    summary = {"final_val": final.tolist(), "best_val": final.tolist()}
    summary["max_attn_logit"] = np.full_like(final, 10.0).tolist()
    key = "c" if kinds[arm] == "c" else "lr"
    arms[arm] = {
      f"{key}_sweep": summary,
      f"{key}_sensitivity": lr_sensitivity(final, np.full(final.shape[1], 5.0)).tolist(),
    }
  return {
    "part": name,
    "domain": name,
    "info": {"n_params": 10},
    "lrs": [1e-3, 1e-2, 1e-1],
    "c_entry": [1e-4, 1e-3, 1e-2],
    "cap_loss": 5.0,
    "arms": arms,
  }


def test_renaming_test_reads_stabiliser_renaming_and_twin():
  kinds = {"adamw": "lr", "relativistic per_component": "c", "adamw+clip": "c", "lion": "lr"}
  # Per seed (columns): AdamW has a sharp optimum at lr 1e-2; per_component a flat one
  # at c 1e-3 (step 1e-2: the same offset, 0 grid steps); adamw+clip is per_component's
  # copy; lion is flat too but its optimum sits at lr 1e-1.
  finals = {
    "adamw": [[4.0, 4.0], [2.0, 2.1], [4.5, 4.4]],
    "relativistic per_component": [[2.3, 2.3], [2.0, 2.0], [2.4, 2.3]],
    "adamw+clip": [[2.3, 2.3], [2.0, 2.0], [2.4, 2.3]],
    "lion": [[2.2, 2.2], [2.1, 2.1], [2.0, 2.0]],
  }
  test = renaming.renaming_test({"results": [_fake_part("a", finals, kinds)]})
  (row,) = test["parts"]
  assert row["stabiliser"] and test["stabiliser_everywhere"]
  np.testing.assert_allclose(row["best_c_entry"], [1e-3, 1e-3])
  np.testing.assert_allclose(row["best_lr"], [1e-2, 1e-2])
  np.testing.assert_allclose(row["offset_steps"], [0.0, 0.0], atol=1e-12)
  assert row["twin"] == "adamw+clip"
  assert row["twins"]["adamw+clip"]["same_best_step"]
  assert not row["twins"]["lion"]["same_best_step"]
  # One seed where per_component is the more sensitive: not a stabiliser.
  finals["relativistic per_component"] = [[2.3, 4.9], [2.0, 2.0], [2.4, 4.9]]
  (row,) = renaming.renaming_test({"results": [_fake_part("a", finals, kinds)]})["parts"]
  assert not row["stabiliser"]


def _strict_json(path):
  def reject(constant):
    raise ValueError(f"{constant} is not JSON")

  return json.loads(path.read_text(), parse_constant=reject)


@pytest.mark.smoke
def test_quick_sweep_writes_one_strict_json_and_its_plots(tmp_path):
  out = tmp_path / "lm_quick"
  returned = sweep.main(["--quick", "--out", str(out)])
  data = _strict_json(out.with_suffix(".json"))
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "lm_quick.json",
    "lm_quick.png",
    "lm_quick_logits.png",
  ]
  assert data["config"]["seeds"] == configs.quick().seeds
  assert [r["domain"] for r in data["results"]] == [r["domain"] for r in returned["results"]]
  results = data["results"]
  assert [r["domain"].split()[0] for r in results] == ["lm", "digits"]
  for res in results:
    n_lr, n_c, n_seeds = len(res["lrs"]), len(res["c_entry"]), data["config"]["seeds"]
    assert math.isclose(res["cap_loss"], math.log(256 if res["domain"].startswith("lm") else 10))
    assert set(res["arms"]) == set(data["config"]["arms"])
    for name, r in res["arms"].items():
      sweep_ = r["lr_sweep"]
      assert np.shape(sweep_["final_val"]) == (n_lr, n_seeds)
      assert np.shape(r["lr_sensitivity"]) == (n_seeds,)
      assert np.all(np.asarray(r["lr_sensitivity"]) >= 0)
      # At the smallest learning rate nothing may diverge.
      assert np.all(np.isfinite(np.asarray(sweep_["final_val"][0], float))), name
      assert np.all(np.asarray(sweep_["nonfinite_step"][0]) == -1), name
      assert np.all(np.isfinite(np.asarray(sweep_["mean_update_rms"], float)))
      if res["domain"].startswith("lm"):
        assert np.all(np.isfinite(np.asarray(sweep_["max_attn_logit"][0], float)))
      if name.startswith("relativistic") or name == "clip_update_norm":
        # A capped arm never produces a non-finite loss, at any LR or c.
        for key in ("lr_sweep", "c_sweep"):
          assert np.all(np.isfinite(np.asarray(r[key]["final_val"], float))), (name, key)
        assert np.shape(r["c_sweep"]["final_val"]) == (n_c, n_seeds)
        bind = np.asarray(r["lr_sweep"]["bind_fraction"], float)
        assert np.all((bind >= 0) & (bind <= 1))
        assert np.shape(r["c_sensitivity"]) == (n_seeds,)
      else:
        assert "c_sweep" not in r
  # What the study measures: at lr = 1 the speed limit keeps the attention logits of
  # the tiny transformer small, where AdamW's grow by orders of magnitude.
  lm = results[0]["arms"]
  top = results[0]["lrs"].index(1.0)
  adamw = np.median(lm["adamw"]["lr_sweep"]["max_attn_logit"][top])
  capped = np.median(lm["relativistic global"]["lr_sweep"]["max_attn_logit"][top])
  assert capped < 0.01 * adamw, (capped, adamw)


def test_spike_events_follow_the_written_definition():
  # Blocks of 5 steps: 2.0 for 4 blocks, 3.0 for 2 (1.5x the running minimum: one spike
  # of 10 steps), 2.2 for 2 (1.1x: below 1.2x, no spike), then a NaN block (a spike that
  # never recovers: 5 steps to the end).
  loss = np.repeat([2.0] * 4 + [3.0] * 2 + [2.2] * 2, 5).astype(float)
  assert spikes.spike_events(loss) == (1, 1.5, 10.0)
  assert spikes.spike_events(np.full(40, 2.0)) == (0, 1.0, 0.0)
  n, height, recover = spikes.spike_events(np.concatenate([loss, np.full(5, np.nan)]))
  assert (n, height, recover) == (2, math.inf, 7.5)


@pytest.mark.smoke
def test_per_component_quick_writes_every_run_and_resumes(tmp_path):
  out = tmp_path / "pc"
  first = per_component.main(["--quick", "--out", str(out)])
  data_ = _strict_json(out.with_suffix(".json"))
  assert (tmp_path / "pc.png").stat().st_size > 0
  parts = configs.per_component_quick()
  assert [r["part"] for r in data_["results"]] == [p.name for p in parts]
  for res, part in zip(data_["results"], parts, strict=True):
    n_seeds = part.config.seeds
    assert list(res["arms"]) == [a.name for a in optimizers.selected("lm", part.config.arms)]
    for name, r in res["arms"].items():
      # Capped arms over c only (at lr = 1), the others over the LR grid; per seed.
      key, grid = ("c", res["c_entry"]) if "c_sweep" in r else ("lr", res["lrs"])
      assert ("c_sweep" in r) == (optimizers.selected("lm", [name])[-1].cap is not None)
      assert "lr_sweep" not in r or key == "lr", name
      assert np.shape(r[f"{key}_sweep"]["final_val"]) == (len(grid), n_seeds)
      assert np.shape(r[f"{key}_sensitivity"]) == (n_seeds,)
      assert np.all(np.asarray(r[f"{key}_sensitivity"]) >= 0)
    # Every finished arm is on disk, one file each.
    assert len(list((tmp_path / "pc_runs").glob("*.json"))) == sum(
      len(optimizers.selected("lm", p.config.arms)) for p in parts
    )
  # A second run trains nothing and returns the same results.
  second = per_component.main(["--quick", "--out", str(out)])
  assert json_safe(second["results"]) == _strict_json(out.with_suffix(".json"))["results"]
  assert _strict_json(out.with_suffix(".json"))["results"] == data_["results"]
  assert second["config"]["seconds"] < first["config"]["seconds"]
  assert "| size |" in renaming.markdown(data_)


@pytest.mark.smoke
def test_step_time_times_every_optimizer_on_a_tiny_transformer(tmp_path):
  tiny = "--d 16 --depth 1 --heads 2 --seq-len 16 --batch 4 --time-steps 2 --time-rounds 2"
  out = step_time.main([*tiny.split(), "--out", str(tmp_path / "t")])
  data_ = _strict_json(tmp_path / "t.json")
  names = ["optax.adamw", *(f"relativistic_adamw {m}" for m in relax_optax.MODES)]
  assert list(data_["results"]) == [*names, "optax.adamw+optax.clip"]
  for r in data_["results"].values():
    assert len(r["jit_rounds_ms"]) == 2 and all(t > 0 for t in r["jit_rounds_ms"])
  assert data_["results"]["optax.adamw"]["jit_ratio"] == 1.0
  assert out["config"]["steps"] == 2
