"""`qvl psa-profile --out DIR`: the report as profile.json and, with matplotlib, pictures.

Files written into DIR:

- `profile.json`: the report (as `--json` prints it) plus "masks": the kept level masks as
  {"layer", "head", "levels": [[...]]} (values 0, 1, 2, 4, 8; above the diagonal 0 = not visible);
- `mask-layer{L}-head{H}.png`: one heat map per kept layer and head (query block down, key block
  across; 1x dark to 8x light, skipped grey, not visible white);
- `density-by-layer.png`: each layer's level shares (stacked bars) and density (line).

matplotlib is optional (`pip install 'qvl[plots]'`): without it only profile.json is written.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

PLOTS_HINT = "pictures need matplotlib: pip install 'qvl[plots]'"
# Level -> (label, colour): full resolution darkest, coarser lighter, skipped grey.
LEVEL_STYLE = {
    1: ("1x", "#08306b"),
    2: ("2x", "#2171b5"),
    4: ("4x", "#6baed6"),
    8: ("8x", "#c6dbef"),
    0: ("skipped", "#bdbdbd"),
}


def mask_file(layer: int, head: int) -> str:
    return f"mask-layer{layer}-head{head}.png"


DENSITY_FILE = "density-by-layer.png"


def out_folder(out: str | None) -> Path | None:
    """`--out` as the folder to write into (None where none is asked for); an `OptionError` where
    it names a file or could not be made or written, checked before any model loads. The folder
    itself is made by `write_profile`, so a run that fails before it leaves nothing behind."""
    if out is None:
        return None
    from qvl.errors import OptionError
    from qvl.paths import check_folder_writable

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"--out {out} is a file, not a folder")
    try:
        check_folder_writable(folder)
    except OSError as exc:
        raise OptionError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return folder


def write_profile(out_dir: Path, report: dict, masks: list[dict]) -> tuple[list[Path], bool]:
    """Write profile.json, and the pictures when matplotlib can be imported, each whole or not at
    all (written beside, then renamed). Returns (the files written, whether the pictures were
    drawn); an `OptionError` naming the file that could not be written. `out_dir` is made if
    missing."""
    from qvl.errors import OptionError

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None
    data = {**report, "masks": [{**m, "levels": m["levels"].tolist()} for m in masks]}
    text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
    written = [_whole(out_dir / "profile.json", lambda path: path.write_text(text))]
    try:
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return written, False
    for mask in masks:
        draw = partial(draw_mask, mask["levels"], f"layer {mask['layer']}, head {mask['head']}")
        written.append(_whole(out_dir / mask_file(mask["layer"], mask["head"]), draw))
    if any(row["density"] is not None for row in report["per_layer"]):
        written.append(_whole(out_dir / DENSITY_FILE, partial(draw_density, report["per_layer"])))
    return written, True


def _whole(path: Path, write) -> Path:
    """`write` into `path` whole or not at all (`paths.write_atomically`); an `OptionError` naming
    the file where it cannot be written."""
    from qvl.errors import OptionError
    from qvl.paths import write_atomically

    try:
        write_atomically(path, write)
    except OSError as exc:
        raise OptionError(f"--out {path.parent}: cannot write {path.name} ({exc.strerror or exc})") from None
    return path


def draw_mask(levels, title: str, path: Path) -> None:
    """A heat map of one head's level mask [nb, nb] (causal: blocks above the diagonal blank)."""
    import numpy as np
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    order = [1, 2, 4, 8, 0]
    index = np.full(levels.shape, np.nan)
    for i, level in enumerate(order):
        index[levels == level] = i
    index[np.triu(np.ones(levels.shape, dtype=bool), k=1)] = np.nan  # keys after the query block
    visible = np.tril(np.ones(levels.shape, dtype=bool))
    density = float(sum((levels[visible] == lv).sum() / lv for lv in (1, 2, 4, 8)) / visible.sum())
    cmap = ListedColormap([LEVEL_STYLE[lv][1] for lv in order]).with_extremes(bad="white")
    figure = Figure(figsize=(4.2, 3.6), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(
        np.ma.masked_invalid(index), cmap=cmap, norm=BoundaryNorm(np.arange(-0.5, 5), 5), interpolation="nearest"
    )
    ax.set_title(f"{title}: density {density:.0%}", fontsize=10)
    ax.set_xlabel("key block")
    ax.set_ylabel("query block")
    bar = figure.colorbar(image, ax=ax, ticks=range(5), shrink=0.8)
    bar.ax.set_yticklabels([LEVEL_STYLE[lv][0] for lv in order])
    figure.savefig(path)


def draw_density(per_layer: list[dict], path: Path) -> None:
    """Stacked level shares per layer with the density as a line."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = [row for row in per_layer if row["density"] is not None]
    layers = [row["layer"] for row in rows]
    figure = Figure(figsize=(max(4.0, 0.25 * len(rows) + 2), 3.2), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    bottom = [0.0] * len(rows)
    for level, (label, colour) in LEVEL_STYLE.items():
        shares = [row["level_fraction"][str(level)] for row in rows]
        ax.bar(layers, shares, bottom=bottom, color=colour, label=label, width=0.8)
        bottom = [b + s for b, s in zip(bottom, shares)]
    ax.plot(layers, [row["density"] for row in rows], color="#d94801", marker="o", label="density")
    ax.set_ylim(0, 1.05)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("share of visible blocks")
    ax.legend(fontsize=7, loc="lower left", ncols=3)
    figure.savefig(path)
