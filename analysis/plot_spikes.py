#!/usr/bin/python3
"""Plot the gradient-spike figure from a thinklab gradient analysis.

For each attention matrix (wq, wk, wv, wo), draws the mean gradient norm per
layer for easy and hard sequences, with every sequence's trace drawn faintly
behind. Reads /analysis/gradient_spikes and writes one PNG per log.
"""

import argparse
import os
import sys

# tllog exits with advice when h5py, numpy or matplotlib is missing, so it
# comes before them.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tllog  # noqa: E402
import numpy as np  # noqa: E402

plt = tllog.import_pyplot()

GROUP = "analysis/gradient_spikes"
LABEL_TEXT = {"loss": "hard = loss above the hard quantile",
              "answer": "hard = answer tokens predicted wrongly"}


def nan_mean(rows):
    """Return the mean over sequences per layer, ignoring NaN (a layer without
    that matrix). The mean is NaN where no sequence has a value."""
    rows = np.asarray(rows, dtype=float)
    count = np.sum(np.isfinite(rows), axis=0)
    total = np.nansum(rows, axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def spike_groups(f, metric, label):
    """Return (matrix names, norms (R, L, 4), labels (R,)) of one log."""
    g = f[GROUP]
    names = tllog.strings(g["matrices"])
    norms = g[metric][:]
    labels = g["label_by_" + label][:]
    return names, norms, labels


# Advice for an empty group, by (label, empty group). The analysis
# options are those of experiments/gradient_spikes.lua.
EMPTY_GROUP_ADVICE = {
    ("answer", "easy"): "train longer (steps=), analyse more sequences (sequences=) or check "
                        "fewer answer tokens (answer_tokens=), or plot --label loss",
    ("answer", "hard"): "analyse more sequences (sequences=) or check more answer tokens "
                        "(answer_tokens=), or plot --label loss",
    ("loss", "easy"): "analyse more sequences (sequences=) or raise easy_quantile",
    ("loss", "hard"): "analyse more sequences (sequences=) or lower hard_quantile",
}


def empty_group_warnings(path, label, labels):
    """Return one warning per empty easy or hard group of a log's labels."""
    warnings = []
    for value, group in ((0, "easy"), (1, "hard")):
        if np.any(labels == value):
            continue
        warnings.append(f"warning: {path}: none of the {len(labels)} sequences is {group} "
                        f"under --label {label} ({LABEL_TEXT[label]}), so the figure has no "
                        f"{group} curve. To get one, {EMPTY_GROUP_ADVICE[label, group]}.")
    return warnings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", help="thinklab logs holding a gradient analysis")
    ap.add_argument("-o", "--out-dir", default=".", help="folder for the PNG files (default .)")
    ap.add_argument("--metric", choices=["nuclear", "frobenius", "max_sv"], default="nuclear",
                    help="matrix norm to plot (default nuclear)")
    ap.add_argument("--label", choices=["loss", "answer"], default="loss",
                    help="easy/hard labels: by loss quantile or by answer correctness "
                         "(default loss)")
    args = ap.parse_args(argv)
    tllog.check_out_dir(args.out_dir)

    written, skipped = 0, []
    titles = tllog.run_labels(args.logs)
    stems = tllog.output_stems(args.logs)
    for path, title, stem in zip(args.logs, titles, stems):
        try:
            f = tllog.open_log(path)
        except tllog.LogError as e:
            tllog.fail(str(e))
        with f:
            if GROUP not in f or f[GROUP + "/step"].shape[0] == 0:
                skipped.append(f"{path}: no gradient analysis recorded; run the analysis "
                               "(experiments/gradient_spikes.lua) first")
                continue
            names, norms, labels = spike_groups(f, args.metric, args.label)
        for warning in empty_group_warnings(path, args.label, labels):
            print(warning, file=sys.stderr)
        n_seq, n_layers, n_mat = norms.shape
        layers = np.arange(n_layers)
        fig, axes = plt.subplots(1, n_mat, figsize=(4 * n_mat, 3.6), sharex=True)
        for m, ax in enumerate(np.atleast_1d(axes)):
            for lab, color, text in ((0, "tab:blue", "easy"), (1, "tab:red", "hard")):
                rows = norms[labels == lab, :, m]
                for r in rows:
                    ax.plot(layers, r, color=color, alpha=0.2, lw=0.7)
                if len(rows):
                    ax.plot(layers, nan_mean(rows), color=color, lw=2.2, marker="o", ms=3,
                            label=f"{text} (n={len(rows)})")
                else:
                    # An empty group stays in the legend, so the figure shows it is missing.
                    ax.plot([], [], color=color, lw=2.2, label=f"{text} (n=0)")
            ax.set_title(f"d loss / d {names[m]}")
            ax.set_xlabel("layer")
            ax.set_xticks(layers)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel(f"{args.metric} norm of the gradient")
        np.atleast_1d(axes)[0].legend(fontsize=8)
        fig.suptitle(f"{title}: gradient norms per layer, easy vs hard "
                     f"({LABEL_TEXT[args.label]}; faint lines: single sequences)")
        fig.tight_layout()
        out = tllog.output_path(args.out_dir, stem, f"_spikes_{args.metric}.png")
        tllog.save_figure(fig, out, args.out_dir, dpi=120)
        plt.close(fig)
        print(out)
        written += 1
    tllog.report_skipped(skipped, written)


if __name__ == "__main__":
    main()
