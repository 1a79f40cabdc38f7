#!/usr/bin/python3
"""Plot elastic inference of a trained ITT model: validation loss against
relative FLOPs per token for every ratio setting in the CSV that
experiments/elastic.lua writes. Uniform settings are joined by a line; the
others are labelled points. Writes one PNG."""
import argparse
import csv
import math
import os
import sys

# tllog exits with advice when h5py, numpy or matplotlib is missing, so it
# comes before them.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tllog  # noqa: E402

plt = tllog.import_pyplot()

COLUMNS = ("setting", "r1", "val_loss", "rel_flops_model", "rel_flops_layers")


def read_rows(path, key):
    """Rows of the CSV with the plotted columns as floats; fails naming the
    file, row and column of anything that cannot be plotted."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                tllog.fail(f"{path}: no column {', '.join(missing)}; pass the elastic.csv that "
                           "experiments/elastic.lua writes")
            rows = list(reader)
    except FileNotFoundError:
        tllog.fail(f"{path}: file not found")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        tllog.fail(f"{path}: cannot be read as CSV ({e})")
    if not rows:
        tllog.fail(f"{path}: no rows; the elastic run wrote its header only")
    for n, r in enumerate(rows, start=2):  # line 1 is the header
        if None in r or None in r.values():
            tllog.fail(f"{path}, line {n}: {len(reader.fieldnames)} fields expected, as in the header")
        for col in ("val_loss", key):
            try:
                r[col] = float(r[col])
            except (TypeError, ValueError):
                tllog.fail(f"{path}, line {n}: {col} = {r[col]!r} is not a number")
            if not math.isfinite(r[col]):
                tllog.fail(f"{path}, line {n}: {col} = {r[col]} is not finite")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("csv", help="elastic.csv from experiments/elastic.lua")
    ap.add_argument("-o", "--out", default="elastic.png", help="output PNG path (default elastic.png)")
    ap.add_argument("--flops", choices=["model", "layers"], default="model",
                    help="relative FLOPs of the whole model or of the layers only (default model)")
    args = ap.parse_args(argv)

    tllog.check_figure_path(args.out)
    key = "rel_flops_" + args.flops
    rows = read_rows(args.csv, key)
    uniform = sorted((r for r in rows if r["setting"].startswith("uniform")), key=lambda r: r[key])
    other = [r for r in rows if not r["setting"].startswith("uniform")]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r[key] for r in uniform], [r["val_loss"] for r in uniform], "o-",
            label="same ratio for every step")
    for r in uniform:
        ax.annotate(r["r1"], (r[key], r["val_loss"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    for r in other:
        ax.plot(r[key], r["val_loss"], "s")
        ax.annotate(r["setting"], (r[key], r["val_loss"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    ax.set_xlabel(f"FLOPs per token relative to dense ({args.flops})")
    ax.set_ylabel("validation loss (nats/token), top-k routing")
    ax.set_title("ITT x4 trained at ratio 0.5, evaluated at other ratios")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tllog.save_figure(fig, args.out, args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
