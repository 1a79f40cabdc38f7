#!/usr/bin/python3
"""Plot routing statistics of every routed layer (ITT, MoD) over training.

For each routed layer and routed step: the fraction of tokens selected, the
router score mean with a band of one standard deviation (cut to the score
range of the gate for ITT layers), and the score histogram of the last logged
step. Writes one PNG per log.
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


# Score ranges of the ITT router gates (option `router` of plugins/itt). MoD
# layers log the raw logits x·w, which have no bounds.
ITT_GATE_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


def score_range(f, name, kind):
    """Return the (low, high) range of a routed layer's scores, or None when
    the scores are unbounded or the log's configuration does not name the
    layer's gate."""
    if kind != "itt":
        return None
    prefix, _, index = name.partition(".")
    layers = tllog.config(f).get("model", {}).get("layers", [])
    if prefix != "layers" or not index.isdigit() or int(index) >= len(layers):
        return None
    options = layers[int(index)].get("options", {})
    return ITT_GATE_RANGES.get(options.get("router"))


def no_routing_groups(f):
    """Return why a log has no /routing/<layer> group, judged from the run's
    configuration and the steps flushed so far."""
    every = {key: tllog.trainer_key(f, key) or 0
             for key in ("log_routing_every", "log_grads_every")}
    if not any(v > 0 for v in every.values()):
        return ("no routing statistics recorded: the run sets neither `log_routing_every` nor "
                "`log_grads_every` above 0; set one of these trainer keys above 0 to record "
                "them for the ITT and MoD layers")
    keys = ", ".join(f"`{k}` = {v}" for k, v in every.items() if v > 0)
    # Routing rows are due at the steps that are multiples of either key.
    steps = tllog.flushed_steps(f)
    due = any(np.any(steps % v == 0) for v in every.values() if v > 0)
    if not due:
        return (f"no routing row has been flushed yet; the run records the routing statistics "
                f"of its ITT and MoD layers ({keys}); {tllog.wait_for_flush(f)}")
    return ("no routed layers in this run: routing statistics exist for ITT and MoD layers "
            "only")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", help="thinklab run logs (.h5)")
    ap.add_argument("-o", "--out-dir", default=".", help="folder for the PNG files (default .)")
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
            if "routing" not in f or len(f["routing"]) == 0:
                skipped.append(f"{path}: {no_routing_groups(f)}")
                continue
            layers, layers_agreement = [], []
            for name, g in f["routing"].items():
                n = tllog.rows(g, "step", "fraction", "score_mean", "score_std",
                               "topk_agreement", "histogram")
                if n == 0:
                    continue
                step, frac, mean, std, agree = (g[k][:n] for k in (
                    "step", "fraction", "score_mean", "score_std", "topk_agreement"))
                kind = g.attrs.get("kind", "")
                layers.append((name, kind, step, frac, mean, std,
                               g["histogram"][len(step) - 1], g["bin_edges"][:],
                               score_range(f, name, kind)))
                layers_agreement.append(agree)
            flush_advice = tllog.wait_for_flush(f)
        if not layers:
            skipped.append(f"{path}: routed layers are registered but no routing row has been "
                           f"flushed yet; {flush_advice}")
            continue

        fig, axes = plt.subplots(len(layers), 3, figsize=(13, 3.2 * len(layers)), squeeze=False)
        for row, (name, kind, steps, frac, mean, std, hist, edges, bounds) in enumerate(layers):
            a_frac, a_score, a_hist = axes[row]
            agree = layers_agreement[row]
            for t in range(frac.shape[1]):
                label = f"routed step {t + 1}" if kind == "itt" else "routed"
                line, = a_frac.plot(steps, frac[:, t], lw=1, label=label)
                if np.isfinite(agree[:, t]).any():
                    a_frac.plot(steps, agree[:, t], lw=1, ls="--", color=line.get_color())
                a_score.plot(steps, mean[:, t], lw=1, label=label)
                low, high = mean[:, t] - std[:, t], mean[:, t] + std[:, t]
                if bounds is not None:
                    # Scores crowded at one end of the gate's range put
                    # mean ± std past it, where no score can lie.
                    low, high = np.clip(low, *bounds), np.clip(high, *bounds)
                a_score.fill_between(steps, low, high, alpha=0.15)
                a_hist.stairs(hist[t], edges, label=label)
            a_frac.set_title(f"{name} ({kind}): fraction selected" +
                             ("\n(dashed: agreement with top-k)" if np.isfinite(agree).any()
                              else ""))
            a_frac.set_ylabel("fraction of tokens")
            a_frac.set_ylim(0, 1.05)
            a_score.set_title("router score mean ± std")
            a_score.set_ylabel("router score")
            a_hist.set_title(f"score histogram at step {int(steps[-1])}")
            a_hist.set_ylabel("tokens")
            for a in (a_frac, a_score):
                a.set_xlabel("training step")
                a.grid(alpha=0.3)
            a_hist.set_xlabel("router score")
            # Zoom on the occupied bins (one empty bin either side): early in
            # training the scores fill a few of the bins.
            used = np.nonzero(hist.sum(axis=0) > 0)[0]
            if len(used):
                lo, hi = max(used[0] - 1, 0), min(used[-1] + 2, len(edges) - 1)
                a_hist.set_xlim(edges[lo], edges[hi])
            a_frac.legend(fontsize=7, framealpha=0.8)
        fig.suptitle(f"{title}: routing statistics")
        fig.tight_layout()
        out = tllog.output_path(args.out_dir, stem, "_routing.png")
        tllog.save_figure(fig, out, args.out_dir, dpi=110)
        plt.close(fig)
        print(out)
        written += 1
    tllog.report_skipped(skipped, written)


if __name__ == "__main__":
    main()
