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

sklearn = pytest.importorskip("sklearn")  # the benchmark's "bench" extra
from benchmarks.lm_stability import configs, data, optimizers, spikes, sweep  # noqa: E402


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
    elif cap == "per_component":
      expect = np.mean(np.abs(np.concatenate([np.ravel(x) for x in u.values()])) > c)
    else:
      expect = np.mean([np.linalg.norm(np.ravel(x)) > c for x in u.values()])
    assert float(binding(v)) == pytest.approx(expect), scale
  hard = optax.clip_by_global_norm(c).update({"a": jnp.array([3.0, 4.0])}, None)[0]
  assert float(optimizers.binding("hard_global", hard, c)) == 1.0


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
