#!/usr/bin/env python3
"""Plot elastic inference of a trained ITT model: validation loss against
relative FLOPs per token for every ratio setting in the CSV that
experiments/elastic.lua writes. Uniform settings are joined by a line; the
others are labelled points. Writes one PNG."""
import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("csv", help="elastic.csv from experiments/elastic.lua")
    ap.add_argument("-o", "--out", default="elastic.png", help="output PNG path (default elastic.png)")
    ap.add_argument("--flops", choices=["model", "layers"], default="model",
                    help="relative FLOPs of the whole model or of the layers only (default model)")
    args = ap.parse_args()

    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{args.csv}: no rows")
    key = "rel_flops_" + args.flops
    uniform = sorted((r for r in rows if r["setting"].startswith("uniform")), key=lambda r: float(r[key]))
    other = [r for r in rows if not r["setting"].startswith("uniform")]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([float(r[key]) for r in uniform], [float(r["val_loss"]) for r in uniform], "o-",
            label="same ratio for every step")
    for r in uniform:
        ax.annotate(r["r1"], (float(r[key]), float(r["val_loss"])), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    for r in other:
        ax.plot(float(r[key]), float(r["val_loss"]), "s")
        ax.annotate(r["setting"], (float(r[key]), float(r["val_loss"])), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    ax.set_xlabel(f"FLOPs per token relative to dense ({args.flops})")
    ax.set_ylabel("validation loss (nats/token), top-k routing")
    ax.set_title("ITT x4 trained at ratio 0.5, evaluated at other ratios")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
