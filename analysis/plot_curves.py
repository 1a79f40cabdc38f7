#!/usr/bin/python3
"""Plot the training curves of several thinklab runs on one figure.

Draws training loss against step (smoothed) for every log, with validation
loss of each evaluation as markers, and writes one PNG.
"""

import argparse
import os
import sys

# tllog exits with advice when h5py, numpy or matplotlib is missing, so it
# comes before them.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tllog  # noqa: E402

plt = tllog.import_pyplot()


def validation_points(rows, mode):
    """Return the validation rows to draw under routing `mode`: those
    evaluated under it, and every row of a model without routed layers,
    because such a model routes nothing whatever the mode."""
    return [r for r in rows if r.get("routing_mode") == mode or not tllog.routed(r)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", help="thinklab run logs (.h5)")
    ap.add_argument("-o", "--out", default="curves.png", help="output PNG path (default curves.png)")
    ap.add_argument("--smooth", type=int, default=20,
                    help="moving-average window over training steps (default 20)")
    ap.add_argument("--routing", default="topk",
                    help="routing mode of the validation points to draw: topk, causal or "
                         "calibrated (default topk)")
    args = ap.parse_args(argv)
    if args.smooth < 1:
        tllog.fail(f"--smooth {args.smooth} must be at least 1 (1 draws the raw losses)")
    if args.routing not in tllog.MODES:
        tllog.fail(f"--routing {args.routing} is not a routing mode of the evaluations; give "
                   f"{', '.join(tllog.MODES[:-1])} or {tllog.MODES[-1]}")
    tllog.check_figure_path(args.out)

    labels = tllog.run_labels(args.logs)
    fig, ax = plt.subplots(figsize=(8, 5))
    for path, name in zip(args.logs, labels):
        try:
            f = tllog.open_log(path)
        except tllog.LogError as e:
            tllog.fail(str(e))
        with f:
            if "train/step" not in f or f["train/step"].shape[0] == 0:
                tllog.fail(f"{path}: no training steps recorded yet; wait for the first flush")
            steps, loss = tllog.columns(f["train"], "step", "loss")
            line, = ax.plot(steps, tllog.smooth(loss, args.smooth), lw=1.2, label=f"{name} train")
            val = [r for r in tllog.eval_rows(f) if r.get("split") == "val"]
            ev = validation_points(val, args.routing)
            if val and not ev:
                modes = sorted({str(r.get("routing_mode")) for r in val})
                print(f"{path}: no validation loss under {args.routing} routing (the log has "
                      f"{', '.join(modes)}); drawing its training loss only", file=sys.stderr)
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
    tllog.save_figure(fig, args.out, args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
