#!/usr/bin/python3
"""Plot a token x layer heat map of activation-gradient norms.

Reads one row of /token_grads (the last by default): ||dL/dh_l[i]|| for every
residual state l and logged token i. Where the run has routed layers, the
tokens the router chose at the same training step are marked on the rows of
the layers they belong to. Writes one PNG per log, with the per-token loss
drawn above the map.
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tllog  # noqa: E402


def layer_index(name):
    """The layer number in a name such as 'layers.3', or None."""
    for part in name.replace("/", ".").split("."):
        if part.isdigit():
            return int(part)
    return None


def routing_marks(f, step):
    """Return [(layer, routed step, mask (M,))] of routed layers at a training step."""
    marks = []
    if "routing" not in f:
        return marks
    for name, g in f["routing"].items():
        steps = g["step"][:]
        hit = np.nonzero(steps == step)[0]
        layer = layer_index(name)
        if len(hit) == 0 or layer is None:
            continue
        mask = g["mask"][hit[-1]]
        for t in range(mask.shape[0]):
            marks.append((layer, t, mask[t]))
    return marks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", help="thinklab run logs (.h5)")
    ap.add_argument("-o", "--out-dir", default=".", help="folder for the PNG files (default .)")
    ap.add_argument("--row", type=int, default=-1,
                    help="row of /token_grads to plot, negative counts from the end (default -1)")
    ap.add_argument("--tokens", type=int, default=128,
                    help="maximum token positions to draw (default 128)")
    args = ap.parse_args(argv)

    for path in args.logs:
        try:
            f = tllog.open_log(path)
        except tllog.LogError as e:
            tllog.fail(str(e))
        with f:
            if "token_grads" not in f or f["token_grads/step"].shape[0] == 0:
                tllog.fail(f"{path}: no token gradients recorded; train with token-gradient "
                           "logging every K steps")
            g = f["token_grads"]
            n_rows = g["step"].shape[0]
            row = args.row if args.row >= 0 else n_rows + args.row
            if not 0 <= row < n_rows:
                tllog.fail(f"{path}: --row {args.row} is outside the {n_rows} logged rows")
            step = int(g["step"][row])
            norms = g["norms"][row][:, :args.tokens]
            losses = g["losses"][row][:args.tokens]
            marks = routing_marks(f, step)
            title = tllog.run_name(f, path)

        n_states, n_tok = norms.shape
        fig, (ax_loss, ax) = plt.subplots(2, 1, figsize=(max(8, n_tok * 0.09), 6),
                                          gridspec_kw={"height_ratios": [1, 3]}, sharex=True)
        ax_loss.bar(np.arange(n_tok), np.nan_to_num(losses), color="gray", width=0.9)
        ax_loss.set_ylabel("token loss")
        im = ax.imshow(np.log10(norms + 1e-12), aspect="auto", cmap="viridis",
                       origin="lower", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="log10 ||dL/dh||")
        # Routed layer l reads h_l (the output of layer l-1) and writes h_(l+1):
        # mark its choices on the row of its output state.
        for layer, t, mask in marks:
            sel = np.nonzero(mask[:n_tok])[0]
            y = np.full(len(sel), layer + 1 + 0.15 * (t - 1))
            ax.scatter(sel, y, marker="s", s=6, facecolors="none", edgecolors="red", lw=0.6,
                       label="router chose" if (layer, t) == marks[0][:2] else None)
        ax.set_xlabel("token position")
        ax.set_ylabel("residual state h_l (0 = embedding)")
        ax.set_yticks(range(n_states))
        if marks:
            ax.legend(loc="upper right", fontsize=8)
        fig.suptitle(f"{title}: activation-gradient norms at step {step}")
        fig.tight_layout()
        out = tllog.output_path(args.out_dir, path, "_token_grads.png")
        fig.savefig(out, dpi=120)
        plt.close(fig)
        print(out)


if __name__ == "__main__":
    main()
