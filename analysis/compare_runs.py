#!/usr/bin/python3
"""Write a comparison table (Markdown and CSV) of several thinklab runs.

One row per log: parameters, FLOPs per token, final training loss (mean of the
last --tail steps), and the last validation loss and perplexity under top-k
and under causal routing (with the realised selected fraction).
"""

import argparse
import csv
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tllog  # noqa: E402

COLUMNS = ["run", "params", "flops_per_token", "train_loss", "val_loss_topk", "ppl_topk",
           "val_loss_causal", "ppl_causal", "causal_fraction", "steps"]


def last_eval(rows, mode):
    """The last validation row evaluated under mode ('none' counts as both)."""
    hits = [r for r in rows if r.get("split") == "val" and r.get("routing_mode") in (mode, "none")]
    return hits[-1] if hits else None


def summarize(path, tail):
    """Return one table row (dict) for a log."""
    f = tllog.open_log(path)
    with f:
        row = {"run": tllog.run_name(f, path)}
        row["params"] = tllog.meta_number(f, "param_count")
        row["flops_per_token"] = tllog.meta_number(f, "flops_per_token")
        loss = f["train/loss"][:] if "train/loss" in f else np.array([])
        row["train_loss"] = float(np.mean(loss[-tail:])) if len(loss) else math.nan
        row["steps"] = int(f["train/step"][-1]) + 1 if len(loss) else 0
        rows = tllog.eval_rows(f)
    for mode in ("topk", "causal"):
        r = last_eval(rows, mode)
        row[f"val_loss_{mode}"] = r["loss"] if r else math.nan
        row[f"ppl_{mode}"] = r["perplexity"] if r else math.nan
        if mode == "causal":
            row["causal_fraction"] = r.get("selected_fraction", math.nan) if r else math.nan
    return row


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", help="thinklab run logs (.h5)")
    ap.add_argument("-o", "--out", default="comparison",
                    help="output path without extension; writes .md and .csv (default comparison)")
    ap.add_argument("--tail", type=int, default=50,
                    help="training steps averaged for the final training loss (default 50)")
    args = ap.parse_args(argv)

    rows = []
    for path in args.logs:
        try:
            rows.append(summarize(path, args.tail))
        except tllog.LogError as e:
            tllog.fail(str(e))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in COLUMNS})
    with open(args.out + ".md", "w") as fh:
        fh.write("| " + " | ".join(COLUMNS) + " |\n")
        fh.write("| --- |" + " ---: |" * (len(COLUMNS) - 1) + "\n")
        for r in rows:
            fh.write("| " + " | ".join(fmt(r.get(k)) for k in COLUMNS) + " |\n")
    print(args.out + ".md")
    print(args.out + ".csv")


if __name__ == "__main__":
    main()
