"""Experiment configs: sweep expansion, error messages, results files, an end-to-end sweep."""

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from tiny_models import tiny_config
from ntkal.data import batch_atoms
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.experiment import ConfigError, load_sweep, results_table, run_sweep
from ntkal.models import build_model, save_checkpoint

BASE = """
name = "t"
seeds = [0, 1]
[model]
checkpoint = "ckpt.msgpack"
[data]
dataset = "oc20_like"
tests = ["val_id", "val_ood_ads"]
[loop]
method = ["random", "energy", "joint"]
selector = ["lcmd", "maxdet"]
rounds = 1
[kernel]
sketch_dim = [32, 64]
"""


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_sweep_expands_cartesian_product_and_merges_irrelevant_axes(tmp_path):
    points = load_sweep(write(tmp_path, BASE))
    # random ignores selector and sketch_dim: 1 point; energy, joint: 2 selectors x 2 sketch dims each.
    per_seed = 1 + 2 * 2 * 2
    assert len(points) == 2 * per_seed
    assert {p.loop.seed for p in points} == {0, 1}
    combos = {(p.loop.method, p.loop.selector, p.loop.kernel.sketch_dim) for p in points
              if p.loop.method != "random"}
    assert combos == {(m, s, d) for m in ("energy", "joint") for s in ("lcmd", "maxdet") for d in (32, 64)}
    # list-valued fields stay lists, not sweep axes
    assert all(p.data.tests == ("val_id", "val_ood_ads") for p in points)
    assert len({p.label for p in points}) == per_seed


def test_list_of_lists_sweeps_a_list_field():
    import tomllib

    from ntkal.experiment.config import expand_sweep

    text = BASE.replace('tests = ["val_id", "val_ood_ads"]', 'tests = [["val_id"], ["val_ood_ads"]]')
    text = text.replace('method = ["random", "energy", "joint"]', 'method = "random"').replace("seeds = [0, 1]", "seeds = [0]")
    points = expand_sweep(tomllib.loads(text), check_labels=False)  # load_sweep refuses a [data] axis (below)
    assert sorted(p.data.tests for p in points) == [("val_id",), ("val_ood_ads",)]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("rounds = 1", "roundz = 1"), r"line 12: unknown key 'roundz' in \[loop\]"),
    (lambda t: t.replace('method = ["random", "energy", "joint"]', 'method = "bogus"'), r"line 10: .*method"),
    (lambda t: t.replace("sketch_dim = [32, 64]", "sketch_dim = [32, 64"), "invalid TOML"),
    (lambda t: t.replace('checkpoint = "ckpt.msgpack"', ""), r"missing \[model\] checkpoint"),
    (lambda t: t + "\n[extra]\nx = 1\n", "unknown top-level key or table 'extra'"),
])
def test_config_errors_name_file_and_line(tmp_path, edit, message):
    path = write(tmp_path, edit(BASE), "bad.toml")
    with pytest.raises(ConfigError, match=message) as info:
        load_sweep(path)
    assert str(path) in str(info.value)


def _tiny_checkpoint(tmp_path_factory, elements, name):
    """A saved one-layer tiny model of ``elements`` (symbols), initialised on a Cu/Pt slab."""
    config = tiny_config(elements=elements, num_layers=1, lmax=1)
    model = build_model(config)
    params = model.init(jax.random.key(0), batch_atoms(list(cu_pt_slab_frames(1)), config.cutoff))
    path = tmp_path_factory.mktemp("ckpt") / name
    save_checkpoint(path, params, config)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _tiny_checkpoint(tmp_path_factory, ("H", "C", "N", "O", "Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"),
                            "tiny.msgpack")


def test_sweep_runs_end_to_end_and_writes_results(tmp_path, checkpoint):
    text = f"""
name = "e2e"
seeds = [0]
out = "{tmp_path / 'out'}"
[model]
checkpoint = "{checkpoint}"
[data]
dataset = "oc20_like"
size = "tiny"
cache_dir = "{tmp_path / 'cache'}"
pool = ["train:24"]
tests = ["val_id", "val_ood_cat"]
max_test = 6
target_set = ["val_ood_ads:5"]
[loop]
selector = "maxdet"
initial = 4
batch = 3
rounds = 1
shortlist = 8
[kernel]
sketch_dim = 16
[train]
max_epochs = 1
batch_size = 4
[[variants]]
loop = {{ method = "random" }}
[[variants]]
loop = {{ method = "energy" }}
[[variants]]
loop = {{ method = "energy", selector = "varred", variance_target = "target_set" }}
"""
    results = run_sweep(write(tmp_path, text), progress=False, log=None)
    assert [r.config.loop.method for r in results] == ["random", "energy", "energy"]
    assert results[2].config.label == "energy-varred-d16-med-ev-tgt-pre"
    # the target arm shares round 0 (one folder) and records its target set
    assert len(list((tmp_path / "out" / "points").glob("_round0-seed0-*"))) == 1
    record = json.loads((tmp_path / "out" / "points" / "energy-varred-d16-med-ev-tgt-pre-seed0" / "config.json").read_text())
    assert record["config"]["data"]["target_set"] == ["val_ood_ads:5"]
    assert record["config"]["loop"]["variance_target"] == "target_set"
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len({p["id"] for p in data["picks"] if p["label"] == "energy-varred-d16-med-ev-tgt-pre"}) == 4 + 3
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["rows"]) == 3 * 2 * 2  # methods x rounds x splits
    assert {r["split"] for r in rows} == {"val_id", "val_ood_cat"}
    assert all(float(r["force_mae"]) > 0 for r in rows)
    picks = [p for p in data["picks"] if p["selector"] == "maxdet" and p["round"] == 1]
    assert len(picks) == 3 and len({p["id"] for p in picks}) == 3
    table = results_table(data["rows"])
    assert "energy-maxdet-d16" in table and "random" in table
    # Every arm shares round 0 (same seed ⇒ same initial set), the target arm included.
    r0 = {label: sorted(p["id"] for p in data["picks"] if p["round"] == 0 and p["label"] == label)
          for label in {p["label"] for p in data["picks"]}}
    assert len(r0) == 3 and len({tuple(ids) for ids in r0.values()}) == 1
    np.testing.assert_equal(len(r0["random"]), 4)


@pytest.mark.parametrize("field, default, value, bad, token", [
    ("target_weighting", "none", "per_structure", "per_atom", "tws"),
    ("force_noise_scale", 0.0, 2.0, -1.0, "fn2"),
])
def test_added_acquisition_fields_reach_the_loop_and_the_label(tmp_path, field, default, value, bad, token):
    """A field added after studies were recorded: it reaches the acquisition config, names the
    sweep point (and only that one), leaves round 0 shared, is reset for random arms and is
    checked when the file is loaded."""
    import json
    from ntkal.experiment import load_sweep
    from ntkal.loop import round0_fingerprint
    path = tmp_path / "added.toml"
    text = f"""
name = "added"
[model]
checkpoint = "oc20_like"
[[variants]]
loop = {{ method = "joint", selector = "varred" }}
[[variants]]
loop = {{ method = "joint", selector = "varred", {field} = {json.dumps(value)} }}
[[variants]]
loop = {{ method = "random", {field} = {json.dumps(value)} }}
"""
    path.write_text(text)
    plain, changed, rand = load_sweep(path)
    assert (getattr(plain.loop.acquisition, field), getattr(changed.loop.acquisition, field)) == (default, value)
    assert changed.label == plain.label.replace("-pre", f"-{token}-pre") != plain.label
    assert getattr(rand.loop, field) == default and token not in rand.label  # random picks ignore it
    assert round0_fingerprint(plain.loop) == round0_fingerprint(changed.loop)  # round 0 is shared with it
    path.write_text(text.replace(f"{field} = {json.dumps(value)} }}\n[[", f"{field} = {json.dumps(bad)} }}\n[["))
    with pytest.raises(Exception, match=field):
        load_sweep(path)


def test_target_set_config_names_the_arm_keeps_round0_and_refuses_test_frames(tmp_path):
    from ntkal.experiment.run import shared_round0_fingerprint
    text = """
name = "tgt"
[model]
checkpoint = "oc20_like"
[data]
tests = ["val_id"]
target_set = ["val_ood_ads:50"]
[[variants]]
loop = { method = "random", variance_target = "target_set" }
[[variants]]
loop = { method = "joint", selector = "varred" }
[[variants]]
loop = { method = "joint", selector = "varred", variance_target = "target_set" }
"""
    rand, plain, targeted = load_sweep(write(tmp_path, text))
    assert rand.loop.variance_target == "pool" and rand.label == "random"  # random picks ignore it
    assert targeted.label == plain.label.replace("-pre", "-tgt-pre") != plain.label
    assert targeted.data.target_set == ("val_ood_ads:50",)
    without = load_sweep(write(tmp_path, text.replace('target_set = ["val_ood_ads:50"]', "")
                               .replace(', variance_target = "target_set"', "")))
    assert shared_round0_fingerprint(targeted) == shared_round0_fingerprint(plain) \
        == shared_round0_fingerprint(without[1])  # round 0 never sees the target set
    for edit, line, message in [
            (lambda t: t.replace('"val_ood_ads:50"', '"val_id"'), 7, "'val_id' is also a test split"),
            (lambda t: t.replace('target_set = ["val_ood_ads:50"]', ""), 9, "needs a target set"),
            (lambda t: t.replace('selector = "varred", variance_target', 'selector = "lcmd", variance_target'),
             9, "needs selector 'varred'"),  # the key's first line in the file
            (lambda t: t.replace('"val_ood_ads:50"', '"val_ood_ads:x"'), 7, "split:count")]:
        with pytest.raises(ConfigError, match=message) as info:
            load_sweep(write(tmp_path, edit(text), "bad.toml"))
        assert f"line {line}:" in str(info.value)


def test_variants_expand_to_a_union_of_method_families(tmp_path):
    from ntkal.experiment import load_sweep
    path = tmp_path / "v.toml"
    path.write_text("""
name = "v"
seeds = [0, 1]
[model]
checkpoint = "oc20_like"
[loop]
selector = "lcmd"
noise_var = 0.01
[[variants]]
loop = { method = "random" }
[[variants]]
loop = { method = "joint", selector = ["lcmd", "varred"], noise_rule = "evidence" }
[[variants]]
loop = { method = "energy" }
[[variants]]
loop = { method = "random" }
""")
    points = load_sweep(path)
    got = [(p.loop.method, p.loop.selector, p.loop.noise_rule, p.loop.seed) for p in points]
    assert got == [("random", "lcmd", "auto", 0), ("random", "lcmd", "auto", 1),
                   ("joint", "lcmd", "evidence", 0), ("joint", "lcmd", "evidence", 1),
                   ("joint", "varred", "evidence", 0), ("joint", "varred", "evidence", 1),
                   ("energy", "lcmd", "auto", 0), ("energy", "lcmd", "auto", 1)]
    assert len({p.label for p in points}) == 4
    path.write_text('name = "v"\n[model]\ncheckpoint = "x"\n[[variants]]\ndata = { size = "tiny" }\n')
    with pytest.raises(Exception, match="variant may only set"):
        load_sweep(path)


_NAMED = """name = "v"
seeds = [0, 1]
[model]
checkpoint = "oc20_like"
[loop]
method = "random"
[[variants]]
name = "full-ft"
train = { trainable = "all" }
[[variants]]
name = "readout-ft"
train = { trainable = ["readout"] }
[[variants]]
loop = { method = "joint" }
"""


def test_named_variants_label_their_points_and_settings_the_label_hides_need_names(tmp_path):
    """A variant's ``name`` is its points' label (folders, rows, plots, statistics); two variants
    that differ only in settings the automatic label does not show (``[train]``) share a label
    and would share a folder: refused, asking for names. Bad names are refused at their line."""
    from ntkal.experiment import load_sweep
    from ntkal.experiment.config import ConfigError
    from ntkal.experiment.record import config_record

    path = tmp_path / "v.toml"
    path.write_text(_NAMED)
    points = load_sweep(path)
    assert [(p.label, p.loop.seed, p.loop.train.trainable) for p in points] == [
        ("full-ft", 0, "all"), ("full-ft", 1, "all"), ("readout-ft", 0, ("readout",)),
        ("readout-ft", 1, ("readout",)), ("joint-varred-d512-k4-med-ev-pre", 0, "all"),
        ("joint-varred-d512-k4-med-ev-pre", 1, "all")]
    assert config_record(points[0])["variant"] == "full-ft"
    assert "variant" not in config_record(points[-1])  # unnamed: records made before names stay valid
    for edit, line, message in [
            (lambda t: t.replace('name = "full-ft"', "").replace('name = "readout-ft"', ""), None,
             "both labelled 'random' .seed 0.*name"),
            (lambda t: t.replace('"readout-ft"', '"full-ft"'), 11, "two variants are named 'full-ft'"),
            (lambda t: t.replace('"full-ft"', '"full ft"'), 8, "letters, digits"),
            (lambda t: t.replace('trainable = "all"', "learning_rate = [0.001, 0.002]"), 8,
             "'full-ft' sweeps 2 settings")]:
        path.write_text(edit(_NAMED))
        with pytest.raises(ConfigError, match=message) as info:
            load_sweep(path)
        assert line is None or f"line {line}:" in str(info.value)


SHIPPED = sorted(p for p in (Path(__file__).resolve().parent.parent / "experiments" / "configs").glob("*.toml")
                 if not p.name.startswith("train_"))  # train_*.toml are `ntkal train` configs


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_study_config_loads_with_distinct_points(path):
    """The committed studies must stay loadable (and resumable) as the config format grows."""
    points = load_sweep(path)
    assert points and len({(p.label, p.loop.seed) for p in points}) == len(points)
    assert all(p.out for p in points)


@pytest.fixture(scope="module")
def checkpoint_without_al(tmp_path_factory):
    """A tiny model without Al and Pd (the elements of ``val_ood_cat``'s catalysts)."""
    return _tiny_checkpoint(tmp_path_factory, ("C", "N", "O", "Ni", "Cu", "Ag", "Pt", "Au"), "no_al.msgpack")


def _checks_sweep(tmp_path, checkpoint):
    """Random over 2 seeds, and an arm whose target set (val_ood_cat) holds Al and Pd."""
    return write(tmp_path, f"""
name = "checks"
seeds = [0, 1]
out = "{tmp_path / 'out'}"
[model]
checkpoint = "{checkpoint}"
[data]
dataset = "oc20_like"
size = "tiny"
cache_dir = "{tmp_path / 'cache'}"
pool = ["train:24"]
tests = ["val_id", "val_ood_ads"]
max_test = 6
target_set = ["val_ood_cat:5"]
[loop]
initial = 4
batch = 3
rounds = 1
[kernel]
sketch_dim = 16
[train]
max_epochs = 1
batch_size = 4
refit_e0 = true
[[variants]]
loop = {{ method = "random" }}
[[variants]]
loop = {{ method = "energy", selector = "varred", variance_target = "target_set" }}
""")


class _PointStarted(Exception):
    pass


def test_a_sweep_checks_every_points_inputs_once_before_its_first_point(tmp_path, checkpoint, checkpoint_without_al):
    from ntkal.data import UnknownElementError
    from ntkal.data.compositions import ReferenceEnergyWarning

    # the last points' target set holds Al, which the model lacks: an error before point 1 computes
    lines = []
    with pytest.raises(UnknownElementError, match=r"target set.*'Al'"):
        run_sweep(_checks_sweep(tmp_path, checkpoint_without_al), progress=False, log=lines.append)
    assert not [line for line in lines if line.startswith("== point")]
    assert not list((tmp_path / "out" / "points").glob("*/state.msgpack"))

    # the refit's warnings: one per test split, all before point 1, however many points share them
    def stop_at_first_point(line):
        lines.append(line)
        if line.startswith("== point"):
            raise _PointStarted

    lines.clear()
    with pytest.warns(ReferenceEnergyWarning), pytest.raises(_PointStarted):
        run_sweep(_checks_sweep(tmp_path, checkpoint), progress=False, log=stop_at_first_point, resume=False)
    warned = [line for line in lines if line.startswith("warning: test split")]
    assert [line.split("'")[1] for line in warned] == ["val_id", "val_ood_ads"]
    assert lines[-1].startswith("== point 1/4")


def test_a_data_sweep_axis_is_refused_when_it_loads(tmp_path):
    """Points of a [data] axis would share one label and one point folder: the second data
    setting would stop the sweep, hours in, with a settings mismatch; refused at load instead."""
    text = BASE.replace('tests = ["val_id", "val_ood_ads"]', 'tests = [["val_id"], ["val_ood_ads"]]')
    with pytest.raises(ConfigError, match=r"line 8: two points labelled 'random' \(seed 0\) differ in "
                                          r"data.tests: \('val_id',\) vs \('val_ood_ads',\)"):
        load_sweep(write(tmp_path, text))
