"""Reading thinklab run logs (HDF5) for the analysis scripts.

The layout is documented in LOG_FORMAT.md beside this file. Every script opens
logs through open_log(), which rejects files that are not thinklab logs with a
message naming the file.
"""

import json
import os
import sys

# Debian's /usr/bin/python3 with its packages python3-h5py, python3-matplotlib
# and python3-numpy runs these scripts.
INSTALL_ADVICE = ("run the script with /usr/bin/python3 (Debian's python3-h5py, "
                  "python3-matplotlib and python3-numpy)")


def exit_missing_module(error):
    """Exit with status 2 and one line naming the module of a
    ModuleNotFoundError and the Python that lacks it, in place of a
    traceback."""
    print(f"error: module '{error.name}' not found by {sys.executable}; {INSTALL_ADVICE}",
          file=sys.stderr)
    sys.exit(2)


try:
    import h5py
    import numpy as np
except ModuleNotFoundError as e:
    exit_missing_module(e)


def import_pyplot():
    """Select matplotlib's Agg backend, which needs no display, and return
    matplotlib.pyplot. Exit as exit_missing_module() does when matplotlib is
    missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as e:
        exit_missing_module(e)
    return plt

LOG_VERSION = 1
# The routing modes of the trainer's evaluations (/eval/routing_mode).
MODES = ("topk", "causal", "calibrated")


class LogError(Exception):
    """A file that cannot be read as a thinklab log."""


def open_log(path):
    """Open a thinklab log read-only and check its format version."""
    if not os.path.exists(path):
        raise LogError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise LogError(f"{path}: not an HDF5 file ({e}); pass a thinklab run log (.h5)") from None
    version = f.attrs.get("thinklab_log_version")
    if version is None and "thinklab_checkpoint_version" in f.attrs:
        f.close()
        raise LogError(f"{path} is a thinklab checkpoint, not a run log; pass the .h5 file "
                       "given as `log`")
    if version is None:
        f.close()
        raise LogError(f"{path}: HDF5 file without the 'thinklab_log_version' attribute; "
                       "it was not written by thinklab")
    if int(version) != LOG_VERSION:
        f.close()
        raise LogError(f"{path}: thinklab log version {int(version)}, these scripts read "
                       f"version {LOG_VERSION}; use the analysis scripts of the thinklab "
                       "that wrote it")
    return f


def rows(g, *names):
    """Return how many rows all of the datasets `names` of group g have.

    A log opened while its run flushes can show some datasets of a group
    already extended by the flush in progress and others not yet. The rows
    they all have belong together.
    """
    return min(g[name].shape[0] for name in names)


def columns(g, *names):
    """Read datasets `names` of group g, cut to the rows all of them have."""
    n = rows(g, *names)
    return tuple(g[name][:n] for name in names)


def config(f):
    """Return the run's resolved configuration as a dict ({} if absent)."""
    if "meta/config_json" not in f:
        return {}
    text = f["meta/config_json"].asstr()[()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {}


def run_name(f, path):
    """Return a short label for plots: the config's name (top level, or "name" in
    the experiment object that trainer{name = ...} writes), else the file's
    stem."""
    cfg = config(f)
    experiment = cfg.get("experiment")
    for name in (cfg.get("name"), experiment.get("name") if isinstance(experiment, dict) else None):
        if isinstance(name, str) and name:
            return name
    return os.path.splitext(os.path.basename(path))[0]


def param_count(f):
    """Return the model's parameter count as the trainer recorded it, or None.

    The trainer writes it into the configuration JSON as model.parameters.
    """
    value = config(f).get("model", {}).get("parameters")
    return int(value) if isinstance(value, (int, float)) else None


def train_flops_per_token(f):
    """Return training FLOPs per token (forward plus backward, as counted by the ops),
    averaged over the logged steps, or None.

    /train/flops holds each step's FLOPs; a step trains batch_size x context
    tokens (train.batch_size and train.context of the configuration JSON).
    """
    train = config(f).get("train", {})
    tokens = train.get("batch_size", 0) * train.get("context", 0)
    if "train/flops" not in f or f["train/flops"].shape[0] == 0 or tokens <= 0:
        return None
    return float(np.mean(f["train/flops"][:])) / tokens


def strings(ds):
    """Return a string dataset as a list of str."""
    return [s for s in ds.asstr()[...]]


def eval_rows(f):
    """Evaluation rows as a list of dicts (empty if the run logged none)."""
    if "eval" not in f or "step" not in f["eval"]:
        return []
    g = f["eval"]
    n = g["step"].shape[0]
    cols = {k: g[k] for k in g.keys()}
    rows = []
    for i in range(n):
        row = {}
        for k, ds in cols.items():
            if ds.shape[0] != n:
                continue
            v = ds[i]
            if isinstance(v, bytes):
                v = v.decode()
            row[k] = v.item() if isinstance(v, np.generic) else v
        rows.append(row)
    return rows


def routed(row):
    """Return whether an evaluation row comes from a model with routed layers
    (a row without routing has mode 'none' or a NaN selected fraction)."""
    frac = row.get("selected_fraction")
    return (row.get("routing_mode") != "none" and frac is not None
            and not np.isnan(frac))


def smooth(y, window):
    """Trailing moving average over window points (window <= 1 returns y)."""
    y = np.asarray(y, dtype=float)
    if window <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(len(y)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def fail(message):
    """Print an error for the command line and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def report_skipped(messages, written):
    """After a loop over logs: fail with every message when no figure was
    written, else name the skipped logs on stderr."""
    if messages and written == 0:
        fail("; ".join(messages))
    for m in messages:
        print(f"skipped {m}", file=sys.stderr)


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _distinguish(paths, names, sep):
    """Return names with every name shared by several paths extended by the
    shortest tail of parent folders that distinguishes those paths.

    Where a name is the file's stem, the folders go in front of it, joined
    with sep (seed1/itt). Another name, such as one from the configuration,
    gets the path without extension in brackets (itt (seed1/run)). Paths that
    no folder distinguishes, such as one file given twice, keep a shared name.
    """
    folders = [os.path.dirname(os.path.abspath(p)).strip(os.sep).split(os.sep) for p in paths]
    out = list(names)
    for name in set(names):
        group = [i for i, n in enumerate(names) if n == name]
        if len(group) < 2:
            continue
        # The smallest depth that distinguishes the most paths: all of them
        # unless some are the same file.
        best_depth, best_count = 0, 1
        for depth in range(1, max(len(folders[i]) for i in group) + 1):
            count = len({tuple(folders[i][-depth:]) for i in group})
            if count > best_count:
                best_depth, best_count = depth, count
            if count == len(group):
                break
        if best_depth == 0:
            continue
        for i in group:
            tail = tuple(folders[i][-best_depth:])
            if name == _stem(paths[i]):
                out[i] = sep.join(tail + (name,))
            else:
                out[i] = f"{name} ({'/'.join(tail + (_stem(paths[i]),))})"
    return out


def _number_repeats(names, template):
    """Return names with the second and later copies of a name numbered with
    template.format(name=..., n=...), starting at 2."""
    seen, out = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else template.format(name=name, n=seen[name]))
    return out


def unique_labels(paths, names):
    """Return one plot or table label per log: names[i] (usually run_name()),
    with the shortest distinguishing parent folders added where two logs share
    a name. Logs in seed1/itt.h5 and seed2/itt.h5 become seed1/itt and
    seed2/itt. A file given twice gets "(2)" on its second label."""
    return _number_repeats(_distinguish(paths, names, "/"), "{name} ({n})")


def run_labels(paths):
    """Open every log and return unique_labels() of their run_name(). Exit
    with status 2 and the message of the first file that is not a thinklab
    log."""
    names = []
    for path in paths:
        try:
            f = open_log(path)
        except LogError as e:
            fail(str(e))
        with f:
            names.append(run_name(f, path))
    return unique_labels(paths, names)


def output_stems(paths):
    """Return one output file stem per log: the log's stem, with the shortest
    distinguishing parent folders in front, joined by "_", where two logs
    share a stem (seed1/itt.h5 and seed2/itt.h5 give seed1_itt and
    seed2_itt). A file given twice gets "_2" on its second stem."""
    return _number_repeats(_distinguish(paths, [_stem(p) for p in paths], "_"),
                           "{name}_{n}")


def output_path(out_dir, stem, suffix):
    """out_dir/<stem><suffix>, creating out_dir. Take stem from
    output_stems(), so that logs of the same file name get files of their
    own."""
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, stem + suffix)


def _file_in_the_way(folder):
    """Return the first existing path on the way to folder that is not a
    folder, or None."""
    parts = []
    head = os.path.abspath(folder)
    while True:
        parts.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for p in reversed(parts):
        if not os.path.exists(p):
            return None
        if not os.path.isdir(p):
            return p
    return None


def make_folder(folder, out, advice):
    """Create `folder`, where the -o value `out` writes. If that fails, exit
    with a message naming `out`, the reason and `advice` (what to give
    instead)."""
    folder = folder or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        blocker = _file_in_the_way(folder)
        if blocker is not None:
            fail(f"-o {out}: {blocker} is a file, not a folder; {advice}")
        fail(f"-o {out}: cannot create the folder {folder} ({e.strerror or e}); {advice}")
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(f"-o {out}: no permission to write in the folder {folder}; {advice}")


def check_figure_path(out):
    """Check the -o value of a script that writes one PNG figure, and create
    its folder. Call it before reading any log. The value must name a .png
    file in a folder that exists or can be created."""
    advice = "give the path of a .png file to write, in a folder you can write to"
    if os.path.isdir(out):
        fail(f"-o {out}: this is a folder; {advice}")
    if not out.lower().endswith(".png"):
        fail(f"-o {out}: the figure is written as PNG; {advice}")
    make_folder(os.path.dirname(out), out, advice)


def check_out_dir(out_dir):
    """Check the -o value of a script that writes one PNG per log into a
    folder, and create the folder. Call it before reading any log."""
    advice = "give a folder you can write to (each PNG file is named after its log)"
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        fail(f"-o {out_dir}: this is a file, not a folder; {advice}")
    if not os.path.exists(out_dir) and out_dir.lower().endswith(".png"):
        fail(f"-o {out_dir}: this names a .png file, but the script writes into a folder; "
             f"{advice}")
    make_folder(out_dir, out_dir, advice)


def save_figure(fig, path, out, **kwargs):
    """Save fig to path with fig.savefig(path, **kwargs). If the file cannot
    be written, exit with a message naming the -o value `out`."""
    try:
        fig.savefig(path, **kwargs)
    except OSError as e:
        fail(f"-o {out}: cannot write the figure {path} ({e.strerror or e})")


def trainer_key(f, key):
    """Return the trainer key `key` as the run's configuration records it
    (train.<key> of the configuration JSON), or None when absent."""
    value = config(f).get("train", {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def flushed_steps(f):
    """Return the training steps of /train written by the flushes so far."""
    if "train/step" not in f:
        return np.array([], dtype=np.int64)
    return f["train/step"][:]


def wait_for_flush(f):
    """Return the advice for records that a run is set to write but that no
    flush has written yet."""
    every = f["meta"].attrs.get("flush_every") if "meta" in f else None
    when = f" (every {int(every)} training steps)" if every else ""
    return (f"wait for the next flush{when} and run this again (a run that has ended "
            "stopped before writing one)")
