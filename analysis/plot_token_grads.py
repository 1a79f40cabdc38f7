#!/usr/bin/python3
"""Plot a token x layer heat map of activation-gradient norms.

Reads one row of /token_grads (the last by default): ||dL/dh_l[i]|| for every
residual state l and logged token i. Where the run has routed layers, the
tokens the router chose at the same training step are marked on the rows of
the layers they belong to. Writes one PNG per log, with the per-token loss
drawn above the map.

A second PNG summarises every logged row after step 0 (the untrained model
gives every token about the same loss): per token, the mean over layers of
log10 ||dL/dh_l|| and its layer-to-layer variability (standard deviation of
the differences between consecutive states) against the token's loss, and,
for routed models, the fraction of tokens the router chose per loss quintile.
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


def layer_index(name):
    """The layer number in a name such as 'layers.3', or None."""
    for part in name.replace("/", ".").split("."):
        if part.isdigit():
            return int(part)
    return None


def routing_marks(f, step):
    """Return [(layer name, layer index, routed step, mask (M,))] of routed
    layers at a training step."""
    marks = []
    if "routing" not in f:
        return marks
    for name, g in f["routing"].items():
        steps = g["step"][:tllog.rows(g, "step", "mask")]
        hit = np.nonzero(steps == step)[0]
        layer = layer_index(name)
        if len(hit) == 0 or layer is None:
            continue
        mask = g["mask"][hit[-1]]
        for t in range(mask.shape[0]):
            marks.append((name, layer, t, mask[t]))
    return marks


def chosen_by_router(f, steps, n_tok):
    """(R, n_tok) array: 1 where any routed step of any routed layer chose the
    token at that row's step, 0 where none did, NaN where no mask covers it
    (masks cover the first n_mask_tokens positions). None without routing."""
    if "routing" not in f or len(f["routing"]) == 0:
        return None
    out = np.full((len(steps), n_tok), np.nan)
    for g in f["routing"].values():
        rsteps = g["step"][:tllog.rows(g, "step", "mask")]
        for r, step in enumerate(steps):
            hit = np.nonzero(rsteps == step)[0]
            if len(hit) == 0:
                continue
            mask = g["mask"][hit[-1]]                  # (Ns, M)
            m = min(mask.shape[1], n_tok)
            any_step = mask[:, :m].max(axis=0).astype(float)
            prev = np.nan_to_num(out[r, :m], nan=0.0)
            out[r, :m] = np.maximum(prev, any_step)
    return out


def summary_figure(f, title):
    """The all-rows summary figure, or None when only step 0 was logged."""
    steps, norms, losses = tllog.columns(f["token_grads"], "step", "norms", "losses")
    keep = steps > 0
    if not keep.any():
        return None
    norms = norms[keep]                                # (R, S, N)
    losses = losses[keep].astype(float)                # (R, N)
    chosen = chosen_by_router(f, steps[keep], losses.shape[1])
    logn = np.log10(norms.astype(float) + 1e-12)
    mean_log = logn.mean(axis=1)                       # (R, N)
    jumps = np.diff(logn, axis=1).std(axis=1) if logn.shape[1] > 2 else np.zeros_like(mean_log)
    ok = np.isfinite(losses)
    x, y1, y2 = losses[ok], mean_log[ok], jumps[ok]

    n_panels = 3 if chosen is not None else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(4.6 * n_panels, 4))
    if chosen is not None:
        c = chosen[ok]
        groups = [(c == 1, "tab:red", "chosen by a router"),
                  (c == 0, "tab:blue", "not chosen"),
                  (np.isnan(c), "gray", "no routing mask")]
    else:
        groups = [(np.ones_like(x, dtype=bool), "tab:blue", "token")]
    for ax, y, ylabel in ((axes[0], y1, "mean over states of log10 ||dL/dh_l||"),
                          (axes[1], y2, "std of log10 norm jumps between states")):
        for sel, color, label in groups:
            if sel.any():
                ax.scatter(x[sel], y[sel], s=5, alpha=0.5, color=color, label=label)
        r = np.corrcoef(x, y)[0, 1] if len(x) > 2 and np.std(y) > 0 else np.nan
        ax.set_title(f"Pearson r = {r:.2f} over {len(x)} tokens", fontsize=10)
        ax.set_xlabel("token loss (nats)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if len(groups) > 1:
        axes[0].legend(fontsize=7, markerscale=2)
    if chosen is not None:
        ax = axes[2]
        c = chosen[ok]
        known = np.isfinite(c)
        edges = np.quantile(x[known], np.linspace(0, 1, 6)) if known.any() else None
        if edges is not None:
            q = np.clip(np.searchsorted(edges, x[known], side="right") - 1, 0, 4)
            frac = [c[known][q == i].mean() if (q == i).any() else np.nan for i in range(5)]
            ax.bar(np.arange(5), frac, color="tab:red", alpha=0.7)
            ax.set_xticks(np.arange(5))
            ax.set_xticklabels([f"{edges[i]:.1f}-{edges[i + 1]:.1f}" for i in range(5)],
                               fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("token loss quintile (nats)")
        ax.set_ylabel("fraction chosen by any routed step")
        ax.set_title("does the router choose hard tokens?", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{title}: token gradients against token loss, "
                 f"steps {int(steps[keep][0])}-{int(steps[keep][-1])}")
    fig.tight_layout()
    return fig


def no_token_grads(f):
    """Return why a log has no /token_grads row, judged from the run's
    configuration."""
    every = tllog.trainer_key(f, "log_grads_every")
    if (every or 0) <= 0:
        return ("no token gradients recorded: the run's trainer key `log_grads_every` is 0 "
                "(the default); set it to K > 0 to record them every K steps")
    if tllog.trainer_key(f, "log_token_seqs") == 0:
        return ("no token gradients recorded: the run sets the trainer key `log_token_seqs` = 0; "
                "set it to 1 or more to record the gradients of that many sequences")
    return (f"no token-gradient row has been flushed yet, though the run records one every "
            f"{every} steps (`log_grads_every`); {tllog.wait_for_flush(f)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", help="thinklab run logs (.h5)")
    ap.add_argument("-o", "--out-dir", default=".", help="folder for the PNG files (default .)")
    ap.add_argument("--row", type=int, default=-1,
                    help="row of /token_grads to plot, negative counts from the end (default -1)")
    ap.add_argument("--tokens", type=int, default=128,
                    help="maximum token positions to draw (default 128)")
    args = ap.parse_args(argv)
    if args.tokens < 1:
        tllog.fail(f"--tokens {args.tokens} must be at least 1 (the number of token positions "
                   "to draw, from the first)")
    tllog.check_out_dir(args.out_dir)

    titles = tllog.run_labels(args.logs)
    stems = tllog.output_stems(args.logs)
    for path, title, stem in zip(args.logs, titles, stems):
        try:
            f = tllog.open_log(path)
        except tllog.LogError as e:
            tllog.fail(str(e))
        with f:
            if "token_grads" not in f or tllog.rows(f["token_grads"], "step", "norms",
                                                    "losses") == 0:
                tllog.fail(f"{path}: {no_token_grads(f)}")
            g = f["token_grads"]
            n_rows = tllog.rows(g, "step", "norms", "losses")
            row = args.row if args.row >= 0 else n_rows + args.row
            if not 0 <= row < n_rows:
                tllog.fail(f"{path}: --row {args.row} is outside the {n_rows} logged rows")
            step = int(g["step"][row])
            norms = g["norms"][row][:, :args.tokens]
            losses = g["losses"][row][:args.tokens]
            marks = routing_marks(f, step)
            summary = summary_figure(f, title)

        n_states, n_tok = norms.shape
        fig = plt.figure(figsize=(max(8, n_tok * 0.09 + 2), 6.5))
        # The colour bar gets a column of its own so that the loss bars and
        # the map share their x positions.
        grid = fig.add_gridspec(2, 2, height_ratios=[1, 3], width_ratios=[40, 1],
                                hspace=0.08, wspace=0.03, top=0.91)
        ax_loss = fig.add_subplot(grid[0, 0])
        ax = fig.add_subplot(grid[1, 0], sharex=ax_loss)
        cax = fig.add_subplot(grid[1, 1])
        ax_loss.bar(np.arange(n_tok), np.nan_to_num(losses), color="gray", width=0.9)
        ax_loss.set_ylabel("token loss\n(nats)")
        ax_loss.tick_params(labelbottom=False)
        im = ax.imshow(np.log10(norms + 1e-12), aspect="auto", cmap="viridis",
                       origin="lower", interpolation="nearest")
        fig.colorbar(im, cax=cax, label="log10 ||dL/dh_l[i]||")
        # Routed layer l reads h_l (the output of layer l-1) and writes h_(l+1):
        # mark its choices on the row of its output state, one marker and a
        # small vertical offset per routed step.
        markers = "sovD^<>p"
        n_steps = max((t for _, _, t, _ in marks), default=0) + 1
        for name, layer, t, mask in marks:
            sel = np.nonzero(mask[:n_tok])[0]
            offset = 0.3 * (t - (n_steps - 1) / 2) / max(n_steps - 1, 1)
            y = np.full(len(sel), layer + 1 + offset)
            ax.scatter(sel, y, marker=markers[t % len(markers)], s=14, facecolors="none",
                       edgecolors="red", lw=0.8, label=f"{name} routed step {t + 1} chose")
        ax.set_xlim(-0.5, n_tok - 0.5)
        ax.set_xlabel("token position in the first sequence of the batch")
        ax.set_ylabel("residual state h_l\n(0 = embedding output)")
        ax.set_yticks(range(n_states))
        if marks:
            ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
        fig.suptitle(f"{title}: activation-gradient norms per token and layer at training step {step}")
        out = tllog.output_path(args.out_dir, stem, "_token_grads.png")
        tllog.save_figure(fig, out, args.out_dir, dpi=120, bbox_inches="tight")
        plt.close(fig)
        print(out)
        if summary is not None:
            out = tllog.output_path(args.out_dir, stem, "_token_grads_summary.png")
            tllog.save_figure(summary, out, args.out_dir, dpi=110)
            plt.close(summary)
            print(out)


if __name__ == "__main__":
    main()
