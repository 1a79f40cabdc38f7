#!/usr/bin/python3
"""Write a comparison table (Markdown and CSV) of several thinklab runs.

One row per log: parameters, training FLOPs per token (forward plus backward,
as counted by the ops) and the final training loss. Then the last validation
loss and perplexity under top-k routing, under the causal threshold (with the
realised selected fraction) and under calibrated thresholds. A model without
routed layers routes nothing, so its one evaluation fills the top-k, causal
and calibrated columns alike.

The training loss is the mean over the last tenth of the run's planned steps
(train.steps of its configuration, at least one step), the window of the
seeds.md tables that experiments/common.lua writes, unless --tail sets
another. A note under the Markdown table states the window and names each
log that contains fewer steps than its window, whose train_loss averages every
logged step. The CSV column train_loss_steps contains the number of steps
averaged.

A run whose last logged step falls short of the steps its configuration
plans (train.steps) has not finished: the Markdown table gives its steps as
"850 of 3000" and a note under the table says so, and the CSV column
planned_steps contains the planned steps.
"""

import argparse
import csv
import math
import os
import sys

# tllog exits with advice when h5py or numpy is missing, so it comes first.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tllog  # noqa: E402
import numpy as np  # noqa: E402

COLUMNS = ["run", "params", "flops_per_token", "train_flops_per_token", "train_loss", "val_loss_topk", "ppl_topk",
           "val_loss_causal", "ppl_causal", "causal_fraction", "val_loss_calibrated",
           "ppl_calibrated", "steps", "planned_steps", "train_loss_steps"]
# The Markdown table shows the planned steps inside the steps cell and the
# training-loss window in a note.
MD_COLUMNS = COLUMNS[:-2]


def last_eval(rows, mode):
    """Return the last validation row evaluated under mode. Rows of a model
    without routing (mode 'none', or NaN selected fraction) count for every
    mode."""
    hits = [r for r in rows if r.get("split") == "val" and
            (r.get("routing_mode") == mode or not tllog.routed(r))]
    return hits[-1] if hits else None


def train_loss_window(planned_steps, logged_steps):
    """Return the default number of final steps averaged for the training
    loss: a tenth of the planned steps (of the logged ones when the
    configuration has none), at least 1. experiments/common.lua
    (E.train_loss_window) uses the same window."""
    steps = planned_steps if planned_steps is not None else logged_steps
    return max(1, steps // 10)


def summarize(path, tail):
    """Return one table row (dict) for a log. tail=None averages the default
    training-loss window."""
    f = tllog.open_log(path)
    with f:
        row = {"run": tllog.run_name(f, path)}
        row["params"] = tllog.param_count(f)
        # Nominal forward FLOPs per token, as the trainer wrote them into
        # the config's model section (routed steps at their ratios).
        nominal = tllog.config(f).get("model", {}).get("flops_per_token")
        row["flops_per_token"] = float(nominal) if isinstance(nominal, (int, float)) else math.nan
        row["train_flops_per_token"] = tllog.train_flops_per_token(f)
        steps, loss = (tllog.columns(f["train"], "step", "loss") if "train/loss" in f
                       else (np.array([]), np.array([])))
        row["steps"] = int(steps[-1]) + 1 if len(loss) else 0
        planned = tllog.trainer_key(f, "steps")
        row["planned_steps"] = int(planned) if planned is not None else None
        window = tail if tail is not None else train_loss_window(row["planned_steps"], len(loss))
        row["train_loss_window"] = window
        row["train_loss_steps"] = min(window, len(loss))
        row["train_loss"] = float(np.mean(loss[-window:])) if len(loss) else math.nan
        rows = tllog.eval_rows(f)
    for mode in tllog.MODES:
        r = last_eval(rows, mode)
        row[f"val_loss_{mode}"] = r["loss"] if r else math.nan
        row[f"ppl_{mode}"] = r["perplexity"] if r else math.nan
        if mode == "causal":
            row["causal_fraction"] = r.get("selected_fraction", math.nan) if r else math.nan
    return row


def unfinished(row):
    """Return whether a run logged fewer steps than its configuration plans."""
    return row["planned_steps"] is not None and row["steps"] < row["planned_steps"]


def fmt_cell(row, key):
    """Format one Markdown cell. The steps of an unfinished run read "850 of
    3000"."""
    if key == "steps" and unfinished(row):
        return f"{row['steps']} of {row['planned_steps']}"
    return fmt(row.get(key))


def short_window_note(rows):
    """Return the sentence that names the runs whose log contains fewer
    steps than their window (such as a log that a resumed run started), or ""."""
    short = [r for r in rows if r["train_loss_steps"] < r["train_loss_window"]]
    if not short:
        return ""
    runs = ", ".join(f"{r['run']} ({r['train_loss_steps']} of {r['train_loss_window']} steps)"
                     for r in short)
    return f" Logs shorter than the window, whose train_loss averages every logged step: {runs}."


def window_note(rows, tail):
    """Return the note that states which steps train_loss averages."""
    if tail is not None:
        return (f"train_loss: mean training loss over the last {tail} logged steps (--tail {tail})."
                + short_window_note(rows))
    windows = {(r["train_loss_window"], r["planned_steps"]) for r in rows}
    if len(windows) > 1:
        per_run = ", ".join(f"{r['run']} {r['train_loss_window']}" for r in rows)
        where = f"the last steps of each run ({per_run})"
    else:
        window, planned = windows.pop()
        if planned is None:
            where = f"the last {window} steps"
        else:
            where = f"the last {window} of {planned} steps"
    return (f"train_loss: mean training loss over {where}, a tenth of the planned steps, the "
            "window of the seeds.md tables that experiments/ write (--tail sets another)."
            + short_window_note(rows))


def fmt(value):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1e5:
            return f"{value:.3g}"
        return f"{value:.4f}"
    return str(value)


def check_table_path(out):
    """Check the -o value before any log is read: a path without extension,
    to which .md and .csv are added, in a folder that exists or can be
    created. Creates that folder."""
    advice = "give a path without extension, such as results/comparison"
    if os.path.isdir(out) or not os.path.basename(out):
        example = os.path.join(out, "comparison")
        tllog.fail(f"-o {out}: this names a folder; give a path without extension in it, such as "
                   f"{example} (which writes {example}.md and {example}.csv)")
    if out.lower().endswith((".md", ".csv")):
        tllog.fail(f"-o {out}: the tables would be {out}.md and {out}.csv; {advice}")
    for ext in (".md", ".csv"):
        if os.path.isdir(out + ext):
            tllog.fail(f"-o {out}: {out + ext} is a folder; give another path")
    tllog.make_folder(os.path.dirname(out), out, advice)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", help="thinklab run logs (.h5)")
    ap.add_argument("-o", "--out", default="comparison",
                    help="output path without extension; writes .md and .csv (default comparison)")
    ap.add_argument("--tail", type=int, default=None,
                    help="final training steps averaged for the training loss (default: a tenth "
                         "of the run's planned steps, as in the seeds.md of experiments/)")
    args = ap.parse_args(argv)
    if args.tail is not None and args.tail < 1:
        tllog.fail(f"--tail {args.tail} must be at least 1")
    check_table_path(args.out)

    rows = []
    for path in args.logs:
        try:
            rows.append(summarize(path, args.tail))
        except tllog.LogError as e:
            tllog.fail(str(e))
    # Logs of the same name (seed1/itt.h5, seed2/itt.h5) get rows of their own.
    labels = tllog.unique_labels(args.logs, [r["run"] for r in rows])
    for r, label in zip(rows, labels):
        r["run"] = label
    try:
        with open(args.out + ".csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k) for k in COLUMNS})
        with open(args.out + ".md", "w") as fh:
            fh.write("| " + " | ".join(MD_COLUMNS) + " |\n")
            fh.write("| --- |" + " ---: |" * (len(MD_COLUMNS) - 1) + "\n")
            for r in rows:
                fh.write("| " + " | ".join(fmt_cell(r, k) for k in MD_COLUMNS) + " |\n")
            fh.write("\n" + window_note(rows, args.tail) + "\n")
            stopped = [r["run"] for r in rows if unfinished(r)]
            if stopped:
                fh.write(f"\nNot finished: {', '.join(stopped)} stopped before the planned steps "
                         "(steps gives logged of planned), so the losses of these runs are not "
                         "final.\n")
    except OSError as e:
        tllog.fail(f"-o {args.out}: cannot write {e.filename or 'the table'} ({e.strerror or e})")
    print(args.out + ".md")
    print(args.out + ".csv")


if __name__ == "__main__":
    main()
