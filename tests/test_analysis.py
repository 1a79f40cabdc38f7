"""The analysis scripts on real run logs.

A short real training run (tests/lua/make_logs.lua through the thinklab
command) writes the log of a tiny dense model and of a tiny ITT model, plus
expected.json with what the Lua side saw. Every script in analysis/ then runs
on them from the command line. The comparison table is checked against values
read from the logs with h5py and against what the model reported, and the
figures must be valid, non-blank PNG files. Each
script must reject files that are not thinklab logs with exit status 2 and a
message naming the file, and one plot must read a log while its run is still
training. A bad -o value or option value gets the same kind of one-line error
before any log is read.

Paths come from the environment (tests/analysis.cmake sets them):
  TL_THINKLAB  the thinklab command
  TL_TEXT      Tiny Shakespeare
  TL_SCRATCH   a folder for logs and figures (default: pytest's tmp_path)
"""

import contextlib
import csv
import importlib
import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
ANALYSIS = os.path.join(TOP, "analysis")
MAKE_LOGS = os.path.join(HERE, "lua", "make_logs.lua")
PYTHON = sys.executable
SCRIPTS = ["compare_runs.py", "plot_curves.py", "plot_routing.py", "plot_spikes.py",
           "plot_token_grads.py"]
STEPS, GRADS_EVERY, TAIL = 40, 10, 10
KINDS = ("dense", "itt", "itt_causal")

sys.path.insert(0, ANALYSIS)
import tllog  # noqa: E402


def env_path(name, default=None):
    value = os.environ.get(name, default)
    if not value or not os.path.exists(value):
        pytest.fail(f"{name}={value!r} does not exist; run through ctest (tests/analysis.cmake "
                    f"sets it) or export it")
    return value


def run_script(script, *args, cwd=None):
    return subprocess.run([PYTHON, os.path.join(ANALYSIS, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def run_main(script, *args):
    """Run a script's main() in this process and return (exit status,
    stderr). Use it for checks that end before anything is drawn, because
    starting Python with matplotlib takes about 0.5 s here. An exception other
    than SystemExit, which would be a traceback on the command line, fails the
    test."""
    module = importlib.import_module(script[:-3])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            module.main(list(args))
        except SystemExit as e:
            return e.code, err.getvalue()
    return 0, err.getvalue()


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    root = os.environ.get("TL_SCRATCH")
    if root:
        os.makedirs(root, exist_ok=True)
        return root
    return str(tmp_path_factory.mktemp("analysis"))


@pytest.fixture(scope="session")
def logs(scratch):
    """Train both tiny models once and return (folder, expected.json as a dict)."""
    thinklab = env_path("TL_THINKLAB", os.path.join(TOP, "build", "bin", "thinklab"))
    text = env_path("TL_TEXT", os.path.join(TOP, "experiments", "data", "tinyshakespeare.txt"))
    out = os.path.join(scratch, "logs")
    os.makedirs(out, exist_ok=True)
    r = subprocess.run([thinklab, "run", MAKE_LOGS, f"text={text}", f"out={out}",
                        f"steps={STEPS}", f"grads_every={GRADS_EVERY}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"make_logs.lua failed:\n{r.stdout}\n{r.stderr}"
    with open(os.path.join(out, "expected.json")) as fh:
        expected = json.load(fh)
    return out, expected


def png_size(path):
    """Return (width, height) of a PNG after checking its signature and IHDR."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path}: first chunk is not IHDR"
    return struct.unpack(">II", head[16:24])


def check_png(path, min_w=500, min_h=300):
    """A valid PNG of plausible size with something drawn on it."""
    assert os.path.exists(path), f"{path} was not written"
    w, h = png_size(path)
    assert min_w <= w <= 6000 and min_h <= h <= 6000, f"{path}: implausible size {w}x{h}"
    # Measured: the figures of this test are 44 to 166 kB, an 8 x 5 inch
    # figure with one empty axes 10.5 kB and a blank one 3.7 kB.
    assert os.path.getsize(path) > 15000, f"{path}: only {os.path.getsize(path)} bytes"
    import matplotlib.image as mpimg
    img = mpimg.imread(path)[..., :3]
    ink = np.mean(np.any(img < 0.9, axis=-1))
    # Measured: 3.2% (one training curve) to 64% (heat maps) of the pixels
    # are not near-white, 1.6% for one empty axes with its ticks.
    assert ink > 0.02, f"{path}: only {ink:.1%} of pixels are drawn"


# ---- the logs hold what the scripts read -----------------------------------

READ_BY_SCRIPTS = {
    "dense": ["meta/config_json", "train/step", "train/loss", "train/flops", "eval/step",
              "eval/split", "eval/loss", "eval/perplexity", "eval/routing_mode",
              "eval/selected_fraction", "token_grads/step", "token_grads/norms",
              "token_grads/losses", "token_grads/tokens"],
    "itt": ["routing/layers.1/step", "routing/layers.1/fraction", "routing/layers.1/score_mean",
            "routing/layers.1/score_std", "routing/layers.1/histogram",
            "routing/layers.1/bin_edges", "routing/layers.1/mask",
            "routing/layers.1/topk_agreement"],
}


def test_logs_hold_every_dataset_the_scripts_read(logs):
    folder, expected = logs
    for kind in KINDS:
        with h5py.File(os.path.join(folder, f"{kind}.h5"), "r") as f:
            assert f.attrs["thinklab_log_version"] == 1
            for name in READ_BY_SCRIPTS["dense"] + (READ_BY_SCRIPTS["itt"] if kind != "dense"
                                                    else []):
                assert name in f, f"{kind}.h5 lacks {name}"
            # Records every K steps, counted from step 0: 0, 10, 20, 30.
            assert list(f["token_grads/step"][:]) == list(range(0, STEPS, GRADS_EVERY))
            assert f["token_grads"].attrs["n_layers"] == expected[kind]["n_layers"]
            config = json.loads(f["meta/config_json"].asstr()[()])
        assert config["model"]["parameters"] == expected[kind]["params"]


# ---- compare_runs.py ---------------------------------------------------------

def test_compare_runs_values(logs, scratch):
    folder, expected = logs
    out = os.path.join(scratch, "figures", "comparison")
    paths = [os.path.join(folder, f"{k}.h5") for k in KINDS]
    r = run_script("compare_runs.py", *paths, "-o", out, "--tail", str(TAIL))
    assert r.returncode == 0, r.stderr
    with open(out + ".csv") as fh:
        rows = {row["run"]: row for row in csv.DictReader(fh)}
    assert set(rows) == set(KINDS)
    for kind in KINDS:
        row, exp = rows[kind], expected[kind]
        with h5py.File(os.path.join(folder, f"{kind}.h5"), "r") as f:
            loss = f["train/loss"][:]
            flops = f["train/flops"][:]
            modes = list(f["eval/routing_mode"].asstr()[:])
            ev_loss, ev_ppl = f["eval/loss"][:], f["eval/perplexity"][:]
            ev_frac = f["eval/selected_fraction"][:]
        # The CSV writes repr() of each double, which reads back exactly:
        # equality, no tolerance.
        assert int(row["params"]) == exp["params"], "params = what model:param_count() returned"
        assert int(row["steps"]) == STEPS
        assert float(row["train_loss"]) == float(np.mean(loss[-TAIL:]))
        # The same mean from the losses the Lua callback saw (doubles in
        # both, summed in a different order by numpy: 1e-12 relative).
        lua_tail = exp["losses"][-TAIL:]
        assert math.isclose(float(row["train_loss"]), sum(lua_tail) / TAIL, rel_tol=1e-12)
        tokens = exp["batch_size"] * exp["context"]
        assert float(row["train_flops_per_token"]) == float(np.mean(flops)) / tokens
        # Forward plus backward per token against the model's nominal forward
        # FLOPs per token: measured 3.14 for both models (backward costs about
        # twice the forward, plus the loss); [2.5, 4] rejects a per-step or
        # forward-only number.
        # The config's nominal forward FLOPs per token is the number the
        # model summary printed to Lua (the same double through JSON %.17g):
        # 1e-12 relative covers the summary's own arithmetic at another T.
        assert math.isclose(float(row["flops_per_token"]), exp["flops_per_token"], rel_tol=1e-12), \
            (row["flops_per_token"], exp["flops_per_token"])
        ratio = float(row["train_flops_per_token"]) / exp["flops_per_token"]
        assert 2.5 < ratio < 4.0, f"{kind}: training/forward FLOPs ratio {ratio}"
        # The last top-k row is the trainer:evaluate Lua called after the run.
        last_topk = max(i for i, m in enumerate(modes) if m == "topk")
        assert float(row["val_loss_topk"]) == ev_loss[last_topk] == exp["eval"]["topk"]["loss"]
        assert float(row["ppl_topk"]) == ev_ppl[last_topk] == exp["eval"]["topk"]["perplexity"]
        if kind != "dense":
            last_causal = max(i for i, m in enumerate(modes) if m == "causal")
            last_cal = max(i for i, m in enumerate(modes) if m == "calibrated")
            assert float(row["val_loss_causal"]) == ev_loss[last_causal]
            assert float(row["val_loss_causal"]) == exp["eval"]["causal"]["loss"]
            assert float(row["ppl_causal"]) == exp["eval"]["causal"]["perplexity"]
            assert float(row["causal_fraction"]) == ev_frac[last_causal]
            assert float(row["causal_fraction"]) == exp["eval"]["causal"]["selected_fraction"]
            assert float(row["val_loss_calibrated"]) == ev_loss[last_cal]
            assert float(row["ppl_calibrated"]) == ev_ppl[last_cal]
            # Routed and not routed differ, so the columns are not copies.
            assert row["val_loss_causal"] != row["val_loss_topk"]
        else:
            # A dense model routes nothing: one evaluation fills every mode.
            assert set(modes) == {"topk"}
            assert row["val_loss_causal"] == row["val_loss_topk"] == row["val_loss_calibrated"]
            assert math.isnan(float(row["causal_fraction"]))
    with open(out + ".md") as fh:
        md = fh.read().splitlines()
    assert md[0].startswith("| run | params |")
    assert len(md) == 2 + len(KINDS) + 2
    assert f"| {expected['dense']['params']} |" in md[2]
    assert md[-2] == ""
    assert md[-1] == (f"train_loss: mean training loss over the last {TAIL} logged steps "
                      f"(--tail {TAIL}).")


def copy_with_config(src, dst, edit):
    """Copy the log src to dst and apply edit(config dict) to its
    meta/config_json."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f["meta/config_json"].asstr()[()])
        edit(config)
        del f["meta/config_json"]
        f["meta/config_json"] = json.dumps(config)


def test_compare_runs_marks_unfinished_run(logs, scratch):
    """A log whose configuration plans more steps than it holds, as a run
    killed part way leaves it: the table gives "40 of 3000" and a note."""
    folder, _ = logs
    work = os.path.join(scratch, "unfinished")
    os.makedirs(work, exist_ok=True)
    killed = os.path.join(work, "killed.h5")
    copy_with_config(os.path.join(folder, "dense.h5"), killed,
                     lambda c: c["train"].update(steps=3000))
    out = os.path.join(work, "comparison")
    r = run_script("compare_runs.py", os.path.join(folder, "dense.h5"), killed, "-o", out)
    assert r.returncode == 0, r.stderr
    with open(out + ".md") as fh:
        md = fh.read().splitlines()
    assert md[2].startswith("| dense |"), md[2]
    assert md[2].endswith(f"| {STEPS} |"), md[2]
    assert md[3].startswith("| killed |"), md[3]
    assert md[3].endswith(f"| {STEPS} of 3000 |"), md[3]
    notes = [line for line in md[4:] if line.startswith("Not finished")]
    assert len(notes) == 1, md
    assert notes[0].startswith("Not finished: killed stopped before the planned steps"), notes
    with open(out + ".csv") as fh:
        rows = {row["run"]: row for row in csv.DictReader(fh)}
    assert rows["dense"]["planned_steps"] == str(STEPS)
    assert rows["killed"]["steps"] == str(STEPS)
    assert rows["killed"]["planned_steps"] == "3000"


def test_compare_runs_notes_short_log(logs, scratch):
    """A log that contains fewer steps than a tenth of its planned steps, as a
    run stopped early leaves it: the note gives the window and names the log
    whose train_loss averages every step it contains."""
    folder, _ = logs
    work = os.path.join(scratch, "short")
    os.makedirs(work, exist_ok=True)
    short = os.path.join(work, "short.h5")
    copy_with_config(os.path.join(folder, "dense.h5"), short,
                     lambda c: c["train"].update(steps=STEPS * 25))
    out = os.path.join(work, "comparison")
    r = run_script("compare_runs.py", short, "-o", out)
    assert r.returncode == 0, r.stderr
    with open(out + ".md") as fh:
        md = fh.read().splitlines()
    window = STEPS * 25 // 10
    note = [line for line in md if line.startswith("train_loss:")]
    assert len(note) == 1, md
    assert f"the last {window} of {STEPS * 25} steps" in note[0], note[0]
    assert note[0].endswith("Logs shorter than the window, whose train_loss averages every "
                            f"logged step: short ({STEPS} of {window} steps)."), note[0]
    with open(out + ".csv") as fh:
        row = next(csv.DictReader(fh))
    assert row["train_loss_steps"] == str(STEPS)

    r = run_script("compare_runs.py", os.path.join(folder, "dense.h5"), "-o", out)
    assert r.returncode == 0, r.stderr
    with open(out + ".md") as fh:
        assert "Logs shorter than the window" not in fh.read()


def test_compare_runs_reads_a_continued_log(scratch):
    """A run stops at step 10 and resumes twice into its own log, the second
    time from its step-10 checkpoint after the log already reached step 20.
    compare_runs gives the row of an uninterrupted run, because the continued
    log has each step once and the same losses (training at 2 threads is
    deterministic)."""
    thinklab = env_path("TL_THINKLAB", os.path.join(TOP, "build", "bin", "thinklab"))
    text = env_path("TL_TEXT", os.path.join(TOP, "experiments", "data", "tinyshakespeare.txt"))
    work = os.path.join(scratch, "continued")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    straight, continued = os.path.join(work, "straight.h5"), os.path.join(work, "continued.h5")
    ck, ck10 = os.path.join(work, "run.ckpt.h5"), os.path.join(work, "run10.ckpt.h5")
    short_run = os.path.join(HERE, "lua", "fixtures", "short_run.lua")

    def train(*args):
        r = subprocess.run([thinklab, "run", short_run, f"text={text}", *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{args}:\n{r.stdout}\n{r.stderr}"
        return r.stderr

    train(f"log={straight}")
    train(f"log={continued}", f"checkpoint={ck}", "stop_at=10")
    shutil.copyfile(ck, ck10)
    train(f"log={continued}", f"checkpoint={ck}", f"resume={ck}")
    err = train(f"log={continued}", f"checkpoint={ck10}", f"resume={ck10}")
    assert "removed the rows of later steps, which this run logs again: train 10, eval 1" in err, err

    with h5py.File(continued, "r") as f:
        assert list(f["train/step"][:]) == list(range(20))
        assert list(f["meta"].attrs["resumed_at_steps"]) == [10, 10]
        assert list(f["eval/step"][:]) == [10, 20]
    out = os.path.join(work, "comparison")
    r = run_script("compare_runs.py", straight, continued, "-o", out)
    assert r.returncode == 0, r.stderr
    with open(out + ".csv") as fh:
        rows = {row.pop("run"): row for row in csv.DictReader(fh)}
    assert rows["continued"] == rows["straight"]
    assert rows["straight"]["steps"] == "20"


TRAIN_RUN_LUA = """
-- One run through experiments/common.lua, as compare.lua trains it, and its
-- seeds.md table.
local p = thinklab.params{common = "", text = "", out = "", steps = 40}
local E = dofile(p.common)
thinklab.threads(2)
local corpus = thinklab.corpus{path = p.text, max_bytes = 100000, val_fraction = 0.1}
local tok = thinklab.tokenizer{kind = "char", corpus = corpus}
local data = corpus:encode(tok)
local r = {d_model = 32, n_head = 4, n_layers = 2, context = 32, batch_size = 8, steps = p.steps,
           lr = 3e-3, eval_every = p.steps, eval_batches = 2}
local o = {out = p.out, warmup = 0, threads = 2, token_grads = false, save_itt = false}
local row = E.train_run(E.models[1], 1, data, tok, r, o)
E.write_seed_table({row}, {"dense"}, p.out .. "/seeds.md", p.out .. "/seeds.csv", "one run")
local f = assert(io.open(p.out .. "/train_loss.txt", "w"))
f:write(string.format("%.17g\\n", row.train_loss))
f:close()
"""


def test_train_loss_window_matches_seed_table(scratch):
    """compare_runs.py by default averages the training loss over the window
    that experiments/common.lua reports in seeds.md (the last tenth of the
    steps), and both tables state it."""
    thinklab = env_path("TL_THINKLAB", os.path.join(TOP, "build", "bin", "thinklab"))
    text = env_path("TL_TEXT", os.path.join(TOP, "experiments", "data", "tinyshakespeare.txt"))
    out = os.path.join(scratch, "train_run")
    os.makedirs(out, exist_ok=True)
    lua = os.path.join(out, "train_run.lua")
    with open(lua, "w") as fh:
        fh.write(TRAIN_RUN_LUA)
    r = subprocess.run([thinklab, "run", lua, f"common={TOP}/experiments/common.lua",
                        f"text={text}", f"out={out}", f"steps={STEPS}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    with open(os.path.join(out, "train_loss.txt")) as fh:
        lua_loss = float(fh.read())
    with open(os.path.join(out, "seeds.md")) as fh:
        seeds_md = fh.read()
    window = f"the last {STEPS // 10} of {STEPS} steps"
    assert f"Train loss: mean training loss over {window}" in seeds_md, seeds_md

    table = os.path.join(out, "comparison")
    r = run_script("compare_runs.py", os.path.join(out, "dense_s1.h5"), "-o", table)
    assert r.returncode == 0, r.stderr
    with open(table + ".csv") as fh:
        row = next(csv.DictReader(fh))
    with open(table + ".md") as fh:
        md = fh.read().splitlines()
    assert int(row["train_loss_steps"]) == STEPS // 10
    # The same doubles summed in another order: 1e-12 relative.
    assert math.isclose(float(row["train_loss"]), lua_loss, rel_tol=1e-12), \
        (row["train_loss"], lua_loss)
    assert md[-1].startswith(f"train_loss: mean training loss over {window}, "), md[-1]


# ---- the figures -------------------------------------------------------------

def test_plot_curves(logs, scratch):
    folder, _ = logs
    out = os.path.join(scratch, "figures", "curves.png")
    r = run_script("plot_curves.py", os.path.join(folder, "dense.h5"),
                   os.path.join(folder, "itt.h5"), "-o", out, "--smooth", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == out
    check_png(out)


def test_plot_routing(logs, scratch):
    folder, _ = logs
    out_dir = os.path.join(scratch, "figures")
    r = run_script("plot_routing.py", os.path.join(folder, "dense.h5"),
                   os.path.join(folder, "itt.h5"), "-o", out_dir)
    # The dense log has no routed layer: skipped with a note, the ITT log
    # drawn.
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "dense.h5: no routed layers" in r.stderr
    check_png(os.path.join(out_dir, "itt_routing.png"))
    assert not os.path.exists(os.path.join(out_dir, "dense_routing.png"))
    # Causal routing: the fraction drifts and the agreement with top-k is
    # drawn (it is NaN under top-k).
    r = run_script("plot_routing.py", os.path.join(folder, "itt_causal.h5"), "-o", out_dir)
    assert r.returncode == 0, r.stderr
    check_png(os.path.join(out_dir, "itt_causal_routing.png"))
    with h5py.File(os.path.join(folder, "itt_causal.h5"), "r") as f:
        assert np.isfinite(f["routing/layers.1/topk_agreement"][:]).all()
    with h5py.File(os.path.join(folder, "itt.h5"), "r") as f:
        assert np.isnan(f["routing/layers.1/topk_agreement"][:]).all()
    # Alone, the dense log is an error. Its run records routing rows, so the
    # message does not tell the user to turn them on.
    r = run_script("plot_routing.py", os.path.join(folder, "dense.h5"), "-o", out_dir)
    assert r.returncode == 2
    assert "no routed layers" in r.stderr
    assert "set one of these" not in r.stderr, r.stderr


@pytest.mark.parametrize("router, kind, limits", [
    ("sigmoid", "itt", (0.0, 1.0)),
    ("tanh", "itt", (-1.0, 1.0)),
    ("sigmoid", "mod", None),
])
def test_plot_routing_band_in_range(logs, scratch, monkeypatch, router, kind, limits):
    """The band of router score mean ± std stays in the ITT gate's range and
    reaches both ends. A copy of the ITT log gets the router and kind under
    test and means near either end of the range, with a std that carries
    mean ± std past it. MoD scores are unbounded logits, so their band keeps
    the logged values."""
    folder, _ = logs
    path = os.path.join(scratch, f"band_{router}_{kind}.h5")
    shutil.copy(os.path.join(folder, "itt.h5"), path)
    low, high = limits or (0.0, 1.0)
    width = high - low
    with h5py.File(path, "r+") as f:
        g = f["routing/layers.1"]
        rows, steps = g["score_mean"].shape
        # Rows alternate between means near the low and the high end. A std
        # of 0.3 of the range carries the band 0.2 of the range past both.
        near_low = np.arange(rows) % 2 == 0
        mean = np.where(near_low, low + 0.1 * width, high - 0.1 * width)
        g["score_mean"][...] = np.repeat(mean[:, None], steps, axis=1)
        g["score_std"][...] = np.full((rows, steps), 0.3 * width)
        g.attrs["kind"] = kind
        config = json.loads(f["meta/config_json"].asstr()[()])
        config["model"]["layers"][1]["options"]["router"] = router
        del f["meta/config_json"]
        f["meta/config_json"] = json.dumps(config)

    figures = []
    save_figure = tllog.save_figure

    def keep_figure(fig, *args, **kwargs):
        figures.append(fig)
        return save_figure(fig, *args, **kwargs)

    monkeypatch.setattr(tllog, "save_figure", keep_figure)
    status, err = run_main("plot_routing.py", path, "-o", os.path.join(scratch, "figures"))
    assert status == 0, err
    assert len(figures) == 1
    score_axes = [a for a in figures[0].axes if a.get_title() == "router score mean ± std"]
    assert len(score_axes) == 1
    bands = score_axes[0].collections
    assert len(bands) == steps
    y = np.concatenate([p.vertices[:, 1] for band in bands for p in band.get_paths()])
    y = y[np.isfinite(y)]
    assert len(y) > 0
    if limits is None:
        assert y.min() == pytest.approx(0.1 - 0.3)
        assert y.max() == pytest.approx(0.9 + 0.3)
    else:
        assert y.min() >= low
        assert y.max() <= high
        assert y.min() == pytest.approx(low)
        assert y.max() == pytest.approx(high)


def test_plot_token_grads(logs, scratch):
    folder, _ = logs
    out_dir = os.path.join(scratch, "figures")
    for kind, row in (("dense", "-1"), ("itt", "0")):
        r = run_script("plot_token_grads.py", os.path.join(folder, f"{kind}.h5"),
                       "-o", out_dir, "--row", row)
        assert r.returncode == 0, r.stderr
        check_png(os.path.join(out_dir, f"{kind}_token_grads.png"))
        check_png(os.path.join(out_dir, f"{kind}_token_grads_summary.png"))
    r = run_script("plot_token_grads.py", os.path.join(folder, "itt.h5"), "-o", out_dir,
                   "--row", "4")
    assert r.returncode == 2
    assert "--row 4 is outside the 4 logged rows" in r.stderr


def test_token_grads_router_marks_match_the_log(logs):
    """The marks drawn on the heat map are the logged masks of that step."""
    folder, _ = logs
    import plot_token_grads
    with tllog.open_log(os.path.join(folder, "itt.h5")) as f:
        step = int(f["token_grads/step"][-1])
        marks = plot_token_grads.routing_marks(f, step)
        mask = f["routing/layers.1/mask"][-1]
        n_steps = int(f["routing/layers.1"].attrs["n_steps"])
    assert [(m[0], m[1], m[2]) for m in marks] == [("layers.1", 1, t) for t in range(n_steps)]
    for name, layer, t, m in marks:
        assert np.array_equal(m, mask[t])
    # Top-k at ratio 0.5 chooses half of the 32 positions of the sequence.
    assert all(int(m.sum()) == 16 for _, _, _, m in marks)
    # The summary's "chosen by any routed step" is the union of those masks,
    # row by row.
    with tllog.open_log(os.path.join(folder, "itt.h5")) as f:
        steps = f["token_grads/step"][:]
        chosen = plot_token_grads.chosen_by_router(f, steps, f["token_grads/losses"].shape[1])
        masks = f["routing/layers.1/mask"][:]
        assert list(f["routing/layers.1/step"][:]) == list(steps)
    assert np.array_equal(chosen, masks.max(axis=1).astype(float))
    with tllog.open_log(os.path.join(folder, "dense.h5")) as f:
        assert plot_token_grads.chosen_by_router(f, f["token_grads/step"][:], 32) is None


def test_plot_spikes_without_analysis(logs, scratch):
    """A real log without /analysis/gradient_spikes (the dense run has none):
    the script must say so and exit 2."""
    folder, _ = logs
    r = run_script("plot_spikes.py", os.path.join(folder, "dense.h5"), "-o",
                   os.path.join(scratch, "figures"))
    assert r.returncode == 2
    assert "no gradient analysis recorded" in r.stderr
    assert "dense.h5" in r.stderr


def test_plot_spikes_on_a_real_analysis(logs, scratch):
    """plot_spikes.py on the ITT log, whose /analysis/gradient_spikes
    trainer:gradient_spikes wrote (make_logs.lua). The norms and labels the
    figure draws, read through spike_groups(), are those Lua received."""
    folder, expected = logs
    import plot_spikes
    path = os.path.join(folder, "itt.h5")
    exp = expected["itt"]["spikes"]
    out_dir = os.path.join(scratch, "figures")
    for label in ("loss", "answer"):
        for metric in ("nuclear", "frobenius"):
            r = run_script("plot_spikes.py", path, "-o", out_dir, "--label", label,
                           "--metric", metric)
            assert r.returncode == 0, r.stderr
            check_png(os.path.join(out_dir, f"itt_spikes_{metric}.png"), min_h=250)
    with tllog.open_log(path) as f:
        names, norms, labels = plot_spikes.spike_groups(f, "nuclear", "loss")
        loss = f["analysis/gradient_spikes/loss"][:]
    assert names == ["wq", "wk", "wv", "wo"]
    n = len(exp["sequences"])
    assert norms.shape == (n, expected["itt"]["n_layers"], 4)
    # Lua received the same doubles the log holds, written as %.17g JSON by
    # make_logs.lua: equal to 1e-15 relative.
    assert np.allclose(norms, np.array(exp["nuclear"]), rtol=1e-15, atol=0)
    assert np.allclose(loss, [s["loss"] for s in exp["sequences"]], rtol=1e-15, atol=0)
    # Default labels: hard = at or above the 0.8 quantile and not easy, easy
    # = the rest; the log's labels and Lua's agree sequence by sequence.
    assert [int(x) for x in labels] == [1 if s["hard"] else 0 for s in exp["sequences"]]
    assert int((labels == 1).sum()) == 2  # 0.8 quantile of 8 losses: position 5.6


def test_plot_spikes_warns_of_empty_group(logs, scratch, monkeypatch):
    """An easy or hard group without sequences gets a warning that names the
    label and what to change, and an n=0 legend entry. In the ITT log every
    answer is wrong, and the loss labels have both groups."""
    folder, _ = logs
    path = os.path.join(folder, "itt.h5")
    all_correct = os.path.join(scratch, "spikes_all_correct.h5")
    shutil.copyfile(path, all_correct)
    with h5py.File(all_correct, "r+") as f:
        f["analysis/gradient_spikes/label_by_answer"][...] = 0
    with h5py.File(path, "r") as f:
        assert set(f["analysis/gradient_spikes/label_by_answer"][:]) == {1}
        assert set(f["analysis/gradient_spikes/label_by_loss"][:]) == {0, 1}

    figures = []
    monkeypatch.setattr(tllog, "save_figure", lambda fig, *args, **kwargs: figures.append(fig))
    out_dir = os.path.join(scratch, "figures")
    cases = [(path, "answer", "easy", "hard (n=8)"),
             (all_correct, "answer", "hard", "easy (n=8)"),
             (path, "loss", None, None)]

    for log, label, empty, other in cases:
        figures.clear()
        status, err = run_main("plot_spikes.py", log, "-o", out_dir, "--label", label)
        assert status == 0, err
        legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
        if empty is None:
            assert "warning" not in err, err
            assert all("(n=0)" not in text for text in legend), legend
            continue
        assert err.count("\n") == 1, err
        assert err.startswith(f"warning: {log}: none of the 8 sequences is {empty} under "
                              f"--label {label} "), err
        assert "To get one, " in err, err
        assert "sequences=" in err, err
        assert sorted(legend) == sorted([f"{empty} (n=0)", other]), legend


# ---- logs of the same file name ------------------------------------------------

@pytest.mark.parametrize("paths, names, labels, stems", [
    (["a/seed1/itt.h5", "a/seed2/itt.h5", "a/dense.h5"], ["itt", "itt", "dense"],
     ["seed1/itt", "seed2/itt", "dense"], ["seed1_itt", "seed2_itt", "dense"]),
    # The shortest tail of folders that distinguishes every path of a name.
    (["x/s1/itt.h5", "y/s1/itt.h5"], ["itt", "itt"],
     ["x/s1/itt", "y/s1/itt"], ["x_s1_itt", "y_s1_itt"]),
    # A configured name that two files share gets their paths in brackets.
    (["a/run.h5", "b/other.h5"], ["itt", "itt"],
     ["itt (a/run)", "itt (b/other)"], ["run", "other"]),
    # The same file twice: numbered, because no folder distinguishes them.
    (["a/itt.h5", "a/itt.h5"], ["itt", "itt"], ["itt", "itt (2)"], ["itt", "itt_2"]),
])
def test_unique_labels_and_stems(paths, names, labels, stems):
    assert tllog.unique_labels(paths, names) == labels
    assert tllog.output_stems(paths) == stems


@pytest.fixture(scope="session")
def same_name_logs(logs, scratch):
    """Two copies of the ITT log as seed1/itt.h5 and seed2/itt.h5."""
    folder, _ = logs
    root = os.path.join(scratch, "same_name")
    paths = []
    for seed in ("seed1", "seed2"):
        os.makedirs(os.path.join(root, seed), exist_ok=True)
        paths.append(os.path.join(root, seed, "itt.h5"))
        shutil.copyfile(os.path.join(folder, "itt.h5"), paths[-1])
    return root, paths


@pytest.mark.parametrize("script, suffixes", [
    ("plot_routing.py", ["_routing.png"]),
    ("plot_token_grads.py", ["_token_grads.png", "_token_grads_summary.png"]),
    ("plot_spikes.py", ["_spikes_nuclear.png"]),
])
def test_same_file_names_get_own_figures(same_name_logs, script, suffixes):
    root, paths = same_name_logs
    out_dir = os.path.join(root, "figures_" + script[:-3])
    shutil.rmtree(out_dir, ignore_errors=True)
    r = run_script(script, *paths, "-o", out_dir)
    assert r.returncode == 0, r.stderr
    expected = [os.path.join(out_dir, f"{seed}_itt{suffix}")
                for seed in ("seed1", "seed2") for suffix in suffixes]
    assert sorted(r.stdout.split()) == sorted(expected)
    assert sorted(os.listdir(out_dir)) == sorted(os.path.basename(p) for p in expected)


def test_same_file_names_get_own_rows(same_name_logs):
    root, paths = same_name_logs
    out = os.path.join(root, "comparison")
    r = run_script("compare_runs.py", *paths, "-o", out)
    assert r.returncode == 0, r.stderr
    with open(out + ".csv") as fh:
        runs = [row["run"] for row in csv.DictReader(fh)]
    assert runs == ["seed1/itt", "seed2/itt"]


def test_same_file_names_get_own_legend(same_name_logs, monkeypatch):
    root, paths = same_name_logs
    figures = []
    monkeypatch.setattr(tllog, "save_figure", lambda fig, *args, **kwargs: figures.append(fig))
    status, err = run_main("plot_curves.py", *paths, "-o", os.path.join(root, "curves.png"))
    assert status == 0, err
    assert len(figures) == 1
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert legend == ["seed1/itt train", "seed1/itt val", "seed2/itt train", "seed2/itt val"]


# ---- how the scripts start ------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS + ["plot_elastic.py"])
def test_script_starts_like_the_others(script):
    """Every script runs as ./script.py with Debian's python3, which has the
    packages it imports."""
    path = os.path.join(ANALYSIS, script)
    with open(path) as fh:
        assert fh.readline() == "#!/usr/bin/python3\n"
    assert os.access(path, os.X_OK), f"{script} is not executable"


def python_without_packages():
    """Return a Python on PATH that cannot import h5py, numpy or matplotlib,
    or None."""
    for name in ("python3", "python"):
        python = shutil.which(name)
        if python is None or os.path.realpath(python) == os.path.realpath(PYTHON):
            continue
        r = subprocess.run([python, "-c", "import h5py, numpy, matplotlib"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0 and "ModuleNotFoundError" in r.stderr:
            return python
    return None


@pytest.mark.parametrize("script", SCRIPTS + ["plot_elastic.py"])
def test_missing_module_message(script, scratch):
    """Under a Python without the packages, a script prints one line naming
    the missing module and /usr/bin/python3, with no traceback."""
    python = python_without_packages()
    if python is None:
        pytest.skip("no Python without h5py, numpy or matplotlib on PATH to run the scripts with")
    r = subprocess.run([python, os.path.join(ANALYSIS, script), "--help"], cwd=scratch,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: module '"), r.stderr
    assert "not found by " in r.stderr, r.stderr
    assert "run the script with /usr/bin/python3" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# ---- rejecting files that are not logs; --help --------------------------------

@pytest.fixture(scope="session")
def not_logs(scratch):
    text = os.path.join(scratch, "notes.txt")
    with open(text, "w") as fh:
        fh.write("step,loss\n0,4.1\n")
    bare = os.path.join(scratch, "bare.h5")
    with h5py.File(bare, "w") as f:
        f["train/loss"] = np.zeros(3)
    future = os.path.join(scratch, "future.h5")
    with h5py.File(future, "w") as f:
        f.attrs["thinklab_log_version"] = np.int64(99)
    checkpoint = os.path.join(scratch, "checkpoint.h5")
    with h5py.File(checkpoint, "w") as f:
        f.attrs["thinklab_checkpoint_version"] = np.int32(1)
    return {"text": (text, "not an HDF5 file"),
            "checkpoint": (checkpoint, "is a thinklab checkpoint, not a run log; pass the .h5 "
                           "file given as `log`"),
            "bare": (bare, "without the 'thinklab_log_version' attribute"),
            "future": (future, "thinklab log version 99"),
            "missing": (os.path.join(scratch, "absent.h5"), "file not found")}


# Every script with the two cases the task names; the version and missing-file
# cases, which the shared reader handles the same way for all, on one script.
REJECT_CASES = ([(s, c) for s in SCRIPTS for c in ("text", "bare")] +
                [("plot_curves.py", "future"), ("plot_curves.py", "missing"),
                 ("plot_curves.py", "checkpoint")])


@pytest.mark.parametrize("script,case", REJECT_CASES)
def test_rejects_files_that_are_not_logs(script, case, not_logs, scratch):
    path, fragment = not_logs[case]
    # Each script gets its own output, because the scripts that write into a
    # folder create it before they read the logs.
    out = os.path.join(scratch, "rejected", script[:-3] + "_" + case)
    if script == "plot_curves.py":
        out += ".png"
    r = run_script(script, path, "-o", out)
    assert r.returncode == 2, f"{script} on {case}: exit {r.returncode}\n{r.stderr}"
    assert r.stderr.startswith("error: "), r.stderr
    assert path in r.stderr, r.stderr
    assert fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(out) or not os.listdir(out), "no output for a rejected file"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    r = run_script(script, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: ")
    assert "-o" in r.stdout
    assert "logs" in r.stdout


# ---- rejecting bad output paths and option values ---------------------------------

@pytest.fixture(scope="session")
def blocker(scratch):
    """A file, given below where a folder is expected."""
    path = os.path.join(scratch, "blocker")
    with open(path, "w") as fh:
        fh.write("a file, not a folder\n")
    return path


# (script, log, -o value, part of the message). {b} is the blocker file and
# {s} the scratch folder. Creating /proc/nope fails, even as root.
BAD_OUTPUTS = [
    ("plot_curves.py", "dense", "/proc/nope/c.png", "cannot create the folder /proc/nope"),
    ("plot_curves.py", "dense", "{s}/c.txt", "the figure is written as PNG"),
    ("plot_curves.py", "dense", "{s}", "this is a folder"),
    ("plot_curves.py", "dense", "{b}/sub/c.png", "{b} is a file, not a folder"),
    ("compare_runs.py", "dense", "{b}/sub/table", "{b} is a file, not a folder"),
    ("compare_runs.py", "dense", "{s}/table.csv", "the tables would be {s}/table.csv.md"),
    ("compare_runs.py", "dense", "{s}", "this names a folder"),
    ("plot_routing.py", "itt", "{b}", "this is a file, not a folder"),
    ("plot_routing.py", "itt", "/proc/nope", "cannot create the folder /proc/nope"),
    ("plot_token_grads.py", "itt", "{b}/sub", "{b} is a file, not a folder"),
    ("plot_token_grads.py", "itt", "{s}/heat.png", "this names a .png file"),
    ("plot_spikes.py", "itt", "{b}", "this is a file, not a folder"),
]


@pytest.mark.parametrize("script,log,out,fragment", BAD_OUTPUTS)
def test_scripts_reject_bad_output(logs, scratch, blocker, script, log, out, fragment):
    """One line naming the -o value and what to give instead, exit status 2,
    before any log is read."""
    folder, _ = logs
    out, fragment = (x.format(b=blocker, s=scratch) for x in (out, fragment))
    status, err = run_main(script, os.path.join(folder, f"{log}.h5"), "-o", out)
    assert status == 2, f"{script} -o {out}: exit {status}\n{err}"
    assert err.startswith(f"error: -o {out}: "), err
    assert err.count("\n") == 1, err
    assert fragment in err, err
    assert "; give " in err, err


# (script, options, start of the message)
BAD_OPTIONS = [
    ("plot_token_grads.py", ["--tokens", "-3"], "--tokens -3 must be at least 1"),
    ("plot_token_grads.py", ["--tokens", "0"], "--tokens 0 must be at least 1"),
    ("plot_curves.py", ["--smooth", "0"], "--smooth 0 must be at least 1"),
    ("plot_curves.py", ["--smooth", "-5"], "--smooth -5 must be at least 1"),
    ("plot_curves.py", ["--routing", "bogus"],
     "--routing bogus is not a routing mode of the evaluations; give topk, causal or calibrated"),
]


@pytest.mark.parametrize("script,options,message", BAD_OPTIONS)
def test_scripts_reject_bad_option_values(logs, scratch, script, options, message):
    folder, _ = logs
    out = os.path.join(scratch, "bad_options", script[:-3] + "_" + "_".join(options))
    if script == "plot_curves.py":
        out += ".png"
    status, err = run_main(script, os.path.join(folder, "itt.h5"), "-o", out, *options)
    assert status == 2, f"{script} {options}: exit {status}\n{err}"
    assert err.startswith(f"error: {message}"), err
    assert err.count("\n") == 1, err
    assert not os.path.exists(out)


def test_curves_validation_points_per_mode(logs):
    """Under each --routing mode the routed models show the rows evaluated
    under it, and the dense model, which routes nothing, every row."""
    folder, _ = logs
    import plot_curves
    for kind in KINDS:
        with tllog.open_log(os.path.join(folder, f"{kind}.h5")) as f:
            val = [r for r in tllog.eval_rows(f) if r["split"] == "val"]
        for mode in tllog.MODES:
            points = plot_curves.validation_points(val, mode)
            if kind == "dense":
                assert val
                assert points == val
            else:
                assert points, (kind, mode)
                assert all(r["routing_mode"] == mode for r in points), (kind, mode)


# ---- elastic inference ---------------------------------------------------------

ELASTIC_CSV = os.path.join(TOP, "experiments", "results_page", "elastic_full_s1.csv")


def test_plot_elastic(scratch):
    for flops in ("model", "layers"):
        out = os.path.join(scratch, "figures", f"elastic_{flops}.png")
        r = run_script("plot_elastic.py", ELASTIC_CSV, "-o", out, "--flops", flops)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == out
        check_png(out)


def elastic_variant(scratch, name, edit):
    """A copy of the shipped elastic CSV with edit(lines) applied."""
    with open(ELASTIC_CSV) as f:
        lines = f.read().splitlines()
    path = os.path.join(scratch, "elastic_cases", name + ".csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(edit(lines)) + "\n")
    return path


def test_plot_elastic_rejects_bad_csv(scratch):
    no_column = elastic_variant(scratch, "no_column",
                                lambda ls: [ls[0].replace("val_loss", "loss")] + ls[1:])
    header_only = elastic_variant(scratch, "header_only", lambda ls: ls[:1])
    not_number = elastic_variant(scratch, "not_number",
                                 lambda ls: ls[:2] + [ls[2].replace(ls[2].split(",")[4], "n/a", 1)]
                                 + ls[3:])
    extra_field = elastic_variant(scratch, "extra_field",
                                  lambda ls: ls[:2] + [ls[2] + ",9"] + ls[3:])
    cases = [(os.path.join(scratch, "absent.csv"), "file not found"),
             (no_column, "no column val_loss"),
             (header_only, "no rows"),
             (not_number, "line 3: val_loss = 'n/a' is not a number"),
             (extra_field, "line 3: 10 fields expected")]
    for path, fragment in cases:
        out = os.path.join(scratch, "elastic_rejected.png")
        r = run_script("plot_elastic.py", path, "-o", out)
        assert r.returncode == 2, f"{path}: exit {r.returncode}\n{r.stderr}"
        assert r.stderr.startswith("error: " + path), r.stderr
        assert fragment in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not os.path.exists(out)


def test_plot_elastic_rejects_bad_output(scratch):
    blocker = os.path.join(scratch, "elastic_blocker")
    with open(blocker, "w") as f:
        f.write("a file, not a folder\n")
    cases = [(os.path.join(blocker, "sub", "x.png"), f"{blocker} is a file, not a folder"),
             (os.path.join(scratch, "elastic.txt"), "give the path of a .png file"),
             (scratch, "give the path of a .png file")]
    for out, fragment in cases:
        r = run_script("plot_elastic.py", ELASTIC_CSV, "-o", out)
        assert r.returncode == 2, f"{out}: exit {r.returncode}\n{r.stderr}"
        assert r.stderr.startswith(f"error: -o {out}: "), r.stderr
        assert fragment in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


# ---- reading a log while its run trains ----------------------------------------

def extend_one_column(path, dataset, extra=2):
    """Give one dataset `extra` more rows than the rest of its group, as a
    reader sees a log whose flush is half done."""
    with h5py.File(path, "a") as f:
        ds = f[dataset]
        n = ds.shape[0]
        ds.resize(n + extra, axis=0)
        ds[n:] = ds[n - 1]


@pytest.mark.parametrize("script,dataset,log", [
    ("plot_curves.py", "train/loss", "dense"),
    ("compare_runs.py", "train/loss", "dense"),
    ("plot_routing.py", "routing/layers.1/fraction", "itt"),
    ("plot_token_grads.py", "token_grads/norms", "itt"),
])
def test_scripts_read_a_log_caught_mid_flush(logs, scratch, script, dataset, log):
    folder, _ = logs
    mid = os.path.join(scratch, "mid_flush")
    os.makedirs(mid, exist_ok=True)
    path = os.path.join(mid, f"{log}.h5")
    with open(os.path.join(folder, f"{log}.h5"), "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    extend_one_column(path, dataset)
    group, name = dataset.rsplit("/", 1)
    with h5py.File(path, "r") as f:
        g = f[group]
        others = [k for k in g if k != name and isinstance(g[k], h5py.Dataset)
                  and g[k].shape[0] == g[name].shape[0] - 2]
        assert others, f"{group} has no dataset of the old length"
        cut = tllog.columns(g, name, others[0])
        assert len(cut[0]) == len(cut[1]) == g[others[0]].shape[0]
    out = os.path.join(mid, script.replace(".py", ""))
    r = run_script(script, path, "-o", out + (".png" if script == "plot_curves.py" else ""))
    assert r.returncode == 0, r.stderr


# Three ITT runs of one step each. off.h5 records neither routing nor token
# gradients, and no_seqs.h5 records the gradients of no sequence. Both are
# closed. unflushed.h5 records both every 5 steps and flushes every 50, so
# it has no flushed row while its run waits on stdin until the test kills it.
UNFLUSHED_LUA = """
local p = thinklab.params{text = "", out = ""}
thinklab.threads(1)
local corpus = thinklab.corpus{path = p.text, max_bytes = 20000, val_fraction = 0.1}
local tok = thinklab.tokenizer{kind = "char", corpus = corpus}
local data = corpus:encode(tok)
local function trainer(name, keys)
  local model = thinklab.model{
    tokenizer = tok, d_model = 16, n_head = 2, context = 16, seed = 1,
    layers = thinklab.pattern{n = 2, default = {plugin = "transformer"},
                              odd = {plugin = "itt", steps = 2, ratios = {0.5}}}}
  local t = {model = model, data = data, steps = 1000, batch_size = 2, context = 16,
             eval_every = 1000, eval_batches = 1, progress_every = 0,
             log = p.out .. "/" .. name .. ".h5", log_overwrite = true, log_flush_every = 50}
  for k, v in pairs(keys) do t[k] = v end
  local tr = thinklab.trainer(t)
  tr:step()
  return tr
end
trainer("off", {log_grads_every = 0, log_routing_every = 0}):close()
trainer("no_seqs", {log_grads_every = 5, log_token_seqs = 0}):close()
local tr = trainer("unflushed", {log_grads_every = 5})
io.stdout:write("ready\\n")
io.stdout:flush()
io.read("l")
"""


def test_missing_records_message_follows_config(scratch):
    """A log without routing or token-gradient rows: the scripts tell the user
    to set the trainer key only when the run's configuration has it at 0.
    When the run records them, the scripts tell the user to wait for the next
    flush."""
    thinklab = env_path("TL_THINKLAB", os.path.join(TOP, "build", "bin", "thinklab"))
    text = env_path("TL_TEXT", os.path.join(TOP, "experiments", "data", "tinyshakespeare.txt"))
    out = os.path.join(scratch, "unflushed")
    os.makedirs(out, exist_ok=True)
    lua = os.path.join(out, "unflushed.lua")
    with open(lua, "w") as fh:
        fh.write(UNFLUSHED_LUA)
    proc = subprocess.Popen([thinklab, "run", lua, f"text={text}", f"out={out}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if line != "ready\n":
            proc.kill()
            pytest.fail(f"unflushed.lua did not reach its wait: {line}{proc.stderr.read()}")
        with h5py.File(os.path.join(out, "unflushed.h5"), "r") as f:
            assert f["train/step"].shape[0] == 0, "unflushed.h5 was flushed"
            assert tllog.trainer_key(f, "log_grads_every") == 5
        cases = [("plot_routing.py", "unflushed", "no routing row has been flushed yet"),
                 ("plot_token_grads.py", "unflushed", "no token-gradient row has been flushed "
                  "yet, though the run records one every 5 steps (`log_grads_every`)"),
                 ("plot_routing.py", "off", "the run sets neither `log_routing_every` nor "
                  "`log_grads_every` above 0; set one of these trainer keys above 0"),
                 ("plot_token_grads.py", "off", "`log_grads_every` is 0 (the default); set it "
                  "to K > 0"),
                 ("plot_token_grads.py", "no_seqs", "`log_token_seqs` = 0; set it to 1 or more")]
        for script, log, fragment in cases:
            path = os.path.join(out, f"{log}.h5")
            status, err = run_main(script, path, "-o", os.path.join(out, "figures"))
            assert status == 2, f"{script} {log}: exit {status}\n{err}"
            assert err.startswith(f"error: {path}: "), err
            assert err.count("\n") == 1, err
            assert fragment in err, err
            if log == "unflushed":
                assert "wait for the next flush (every 50 training steps)" in err, err
                assert "set one of these" not in err, err
                assert "set it to" not in err, err
    finally:
        proc.kill()
        proc.wait()


def flushed_rows(path):
    """Rows of /train after the last finished flush, or 0 when the file
    cannot be opened yet (created but not flushed, or mid-flush)."""
    try:
        with h5py.File(path, "r") as f:
            return f["train/step"].shape[0] if "train/step" in f else 0
    except (OSError, KeyError):
        return 0


def test_plot_curves_reads_a_run_that_is_training(scratch):
    thinklab = env_path("TL_THINKLAB", os.path.join(TOP, "build", "bin", "thinklab"))
    text = env_path("TL_TEXT", os.path.join(TOP, "experiments", "data", "tinyshakespeare.txt"))
    out = os.path.join(scratch, "live")
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "dense.h5")
    if os.path.exists(log):
        os.remove(log)
    # live=true trains 100000 steps, flushing every 2: it runs until killed.
    proc = subprocess.Popen([thinklab, "run", MAKE_LOGS, f"text={text}", f"out={out}",
                             "live=true"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while flushed_rows(log) < 6:
            assert proc.poll() is None, f"the run ended early: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no 6 flushed rows within 120 s"
            time.sleep(0.2)
        png = os.path.join(out, "live_curves.png")
        r = run_script("plot_curves.py", log, "-o", png, "--smooth", "1")
        assert r.returncode == 0, r.stderr
        check_png(png)
        assert proc.poll() is None, "the run must still be training after the plot"
        # The writer kept going: later rows appear to a reader that reopens.
        seen = flushed_rows(log)
        deadline = time.monotonic() + 60
        while flushed_rows(log) <= seen:
            assert time.monotonic() < deadline, "no new rows after the plot"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
