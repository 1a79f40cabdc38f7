#!/usr/bin/python3
"""Plot the training curves of several thinklab runs on one figure.

Draws training loss against step (smoothed) for every log, with validation
loss of each evaluation as markers, and writes one PNG.
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tllog  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", help="thinklab run logs (.h5)")
    ap.add_argument("-o", "--out", default="curves.png", help="output PNG path (default curves.png)")
    ap.add_argument("--smooth", type=int, default=20,
                    help="moving-average window over training steps (default 20)")
    ap.add_argument("--routing", default="topk",
                    help="routing mode of the validation points to draw (default topk)")
    args = ap.parse_args(argv)

    fig, ax = plt.subplots(figsize=(8, 5))
    for path in args.logs:
        try:
            f = tllog.open_log(path)
        except tllog.LogError as e:
            tllog.fail(str(e))
        with f:
            name = tllog.run_name(f, path)
            if "train/step" not in f or f["train/step"].shape[0] == 0:
                tllog.fail(f"{path}: no training steps recorded yet; wait for the first flush")
            steps, loss = tllog.columns(f["train"], "step", "loss")
            line, = ax.plot(steps, tllog.smooth(loss, args.smooth), lw=1.2, label=f"{name} train")
            ev = [r for r in tllog.eval_rows(f)
                  if r.get("split") == "val" and r.get("routing_mode") in (args.routing, "none")]
            if ev:
                ax.plot([r["step"] for r in ev], [r["loss"] for r in ev], "o--",
                        color=line.get_color(), ms=4, lw=0.8, label=f"{name} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"training loss (trailing mean over {args.smooth} steps), "
                 f"validation loss under {args.routing} routing")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
