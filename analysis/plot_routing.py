#!/usr/bin/python3
"""Plot routing statistics of every routed layer (ITT, MoD) over training.

For each routed layer and routed step: the fraction of tokens selected, the
router score mean with one standard deviation, and the score histogram of the
last logged step. Writes one PNG per log.
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", help="thinklab run logs (.h5)")
    ap.add_argument("-o", "--out-dir", default=".", help="folder for the PNG files (default .)")
    args = ap.parse_args(argv)

    for path in args.logs:
        try:
            f = tllog.open_log(path)
        except tllog.LogError as e:
            tllog.fail(str(e))
        with f:
            if "routing" not in f or len(f["routing"]) == 0:
                tllog.fail(f"{path}: no routed layers in this run (routing statistics exist "
                           "for ITT and MoD layers only)")
            layers = []
            for name, g in f["routing"].items():
                if g["step"].shape[0] == 0:
                    continue
                layers.append((name, g.attrs.get("kind", ""), g["step"][:], g["fraction"][:],
                               g["score_mean"][:], g["score_std"][:], g["histogram"][-1],
                               g["bin_edges"][:]))
            title = tllog.run_name(f, path)
        if not layers:
            tllog.fail(f"{path}: routed layers are registered but no routing row was flushed yet")

        fig, axes = plt.subplots(len(layers), 3, figsize=(13, 3.2 * len(layers)), squeeze=False)
        for row, (name, kind, steps, frac, mean, std, hist, edges) in enumerate(layers):
            a_frac, a_score, a_hist = axes[row]
            centers = 0.5 * (edges[:-1] + edges[1:])
            for t in range(frac.shape[1]):
                label = f"step {t + 1}" if kind == "itt" else "routed"
                a_frac.plot(steps, frac[:, t], lw=1, label=label)
                a_score.plot(steps, mean[:, t], lw=1, label=label)
                a_score.fill_between(steps, mean[:, t] - std[:, t], mean[:, t] + std[:, t],
                                     alpha=0.15)
                a_hist.step(centers, hist[t], where="mid", label=label)
            a_frac.set_title(f"{name} ({kind}): fraction selected")
            a_frac.set_ylim(0, 1.05)
            a_score.set_title("router score mean ± std")
            a_hist.set_title(f"score histogram at step {int(steps[-1])}")
            for a in (a_frac, a_score):
                a.set_xlabel("training step")
                a.grid(alpha=0.3)
            a_hist.set_xlabel("router score")
            a_frac.legend(fontsize=7)
        fig.suptitle(f"{title}: routing statistics")
        fig.tight_layout()
        out = tllog.output_path(args.out_dir, path, "_routing.png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        print(out)


if __name__ == "__main__":
    main()
