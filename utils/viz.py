"""Figures with one look: sample grids, training curves, attention overlays."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

STYLE = {"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3, "font.size": 10}
plt.rcParams.update(STYLE)


def show_images(pixels: np.ndarray, titles: Sequence[str] = (), columns: int = 4,
                size: float = 2.6, colours: Sequence[str] | None = None):
    """A grid of ``uint8[N, H, W, 3]`` images with wrapped titles (optionally coloured)."""
    count = len(pixels)
    rows = math.ceil(count / columns)
    titles = [textwrap.fill(title, 26) for title in titles]
    # Room above each image for the longest title (8.5-point lines), so that a long caption
    # never runs into the image above it.
    lines = max((title.count("\n") + 1 for title in titles), default=1)
    title_height = max(0.5, 0.17 * lines + 0.15)
    figure, axes = plt.subplots(rows, columns, squeeze=False,
                                figsize=(columns * size, rows * (size + title_height)))
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        axis.imshow(pixels[index], interpolation="nearest")
        if index < len(titles):
            colour = colours[index] if colours else "black"
            axis.set_title(titles[index], fontsize=8.5, color=colour)
    figure.tight_layout()
    return figure


def plot_history(history: dict, keys: Sequence[str] = ("loss", "val_loss"),
                 score_keys: Sequence[str] = ("val_exact", "val_bleu4", "val_cider")):
    """Loss curves (left) and caption scores per epoch (right) from ``History.history``."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = np.arange(1, len(history[keys[0]]) + 1)
    for key in keys:
        if key in history:
            left.plot(epochs, history[key], marker="o", label=key)
    left.set(xlabel="epoch", ylabel="cross-entropy per word", title="Loss")
    left.legend()
    # CIDEr-D reaches 10 at most, the other scores 1: CIDEr-D gets its own axis on the right,
    # so that the scores below 1 are not pressed flat.
    cider = right.twinx() if "val_cider" in score_keys and "val_cider" in history else None
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    lines = []
    for key in score_keys:
        if key in history:
            axis = cider if key == "val_cider" and cider is not None else right
            lines += axis.plot(epochs, history[key], marker="o", label=key, color=next(colours))
    right.set(xlabel="epoch", ylim=(0, 1.05), ylabel="exact, BLEU-4",
              title="Greedy captions on validation images")
    if cider is not None:
        top = max(1.0, max(history["val_cider"]) * 1.05)
        cider.set(ylim=(0, top), ylabel="CIDEr-D")
        cider.grid(False)
    right.legend(lines, [line.get_label() for line in lines], loc="lower right")
    figure.tight_layout()
    return figure


def show_attention(image: np.ndarray, words: Sequence[str], weights: np.ndarray,
                   columns: int = 6, size: float = 2.0):
    """One panel per word: the image with that word's attention ``weights[t]`` laid over it.

    ``weights`` is ``[T, R]`` with ``R`` a square grid of regions (8x8 = 64 for Shapes).
    """
    grid = int(round(math.sqrt(weights.shape[-1])))
    rows = math.ceil(len(words) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * (size + 0.3)),
                                squeeze=False)
    height, width = image.shape[:2]
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= len(words):
            continue
        axis.imshow(image, interpolation="nearest")
        heat = weights[index].reshape(grid, grid)
        axis.imshow(heat, cmap="magma", alpha=0.6, extent=(0, width, height, 0),
                    interpolation="bilinear")
        axis.set_title(words[index], fontsize=10)
    figure.tight_layout()
    return figure


def table(rows: dict[str, dict[str, float]], digits: int = 3, caption: str = ""):
    """Show ``{row name: {column: value}}`` as an HTML table (in JupyterLab and on the site).

    Returns the IPython ``HTML`` object, so a cell can end with it; floats get ``digits``
    decimals, integers are shown as they are.
    """
    from IPython.display import HTML

    columns = list(dict.fromkeys(column for row in rows.values() for column in row))

    def cell(value):
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    head = "".join(f"<th>{column}</th>" for column in columns)
    body = "".join(
        f"<tr><th>{name}</th>" + "".join(f"<td>{cell(row.get(c, ''))}</td>" for c in columns) + "</tr>"
        for name, row in rows.items())
    title = f"<caption>{caption}</caption>" if caption else ""
    return HTML(f"<table>{title}<thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>")


def plot_by_setting(results: dict[str, dict[str, float]], keys: Sequence[str], xlabel: str = "",
                    title: str = ""):
    """One line per metric in ``keys`` across settings (e.g. beam sizes), the settings in order."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    names = list(results)
    for key in keys:
        axis.plot(names, [results[name][key] for name in names], marker="o", label=key)
    axis.set(xlabel=xlabel, title=title)
    axis.legend()
    figure.tight_layout()
    return figure


def captioner_stages(*, image_size: int, grid: tuple[int, int], grid_channels: int,
                     region_dim: int, units: int, vocab_size) -> list[tuple[str, tuple]]:
    """The captioner's data flow from its sizes: ``(stage, shape of one image's tensor)`` pairs
    from the image to the word logits, as :func:`architecture_stages` measures them on a model
    and :func:`show_architecture` draws them. ``vocab_size`` may be a symbol such as ``"V"``."""
    regions = grid[0] * grid[1]
    return [("image", (image_size, image_size, 3)), ("encoder grid", (*grid, grid_channels)),
            ("regions", (regions, region_dim)), ("attention weights", (regions,)),
            ("context", (region_dim,)), ("LSTM state h, c", (units,)),
            ("word logits", (vocab_size,))]


def architecture_stages(model, image_size: int, grid_channels: int) -> list[tuple[str, tuple]]:
    """The captioner's data flow, measured: one blank image through ``model``'s encoder and one
    decoder step. Returns ``(stage, shape of one image's tensor)`` pairs, from the image to the
    word logits; ``grid_channels`` is the width of the encoder's last feature map (before the
    projection that makes the regions), which the encoder does not return."""
    import keras

    images = np.zeros((1, image_size, image_size, 3), np.uint8)
    regions = model.encoder(images)
    state = model.decoder.initial_state(regions)
    logits, state, weights = model.decoder.step(np.full((1,), model.start_id, np.int32), state)
    rows, columns = model.encoder.grid
    shape = lambda tensor: tuple(int(n) for n in keras.ops.shape(tensor)[1:])  # noqa: E731
    return [("image", (image_size, image_size, 3)), ("encoder grid", (rows, columns, grid_channels)),
            ("regions", shape(regions)), ("attention weights", shape(weights)),
            ("context", shape(regions)[1:]), ("LSTM state h, c", shape(state[0])),
            ("word logits", shape(logits))]


def show_architecture(columns: dict[str, list[tuple[str, tuple]]]):
    """Draw :func:`architecture_stages` side by side, one column per captioner: a box per stage
    with its shape, arrows between them, and the loop that feeds each word back."""
    figure, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 6.4), squeeze=False)
    notes = {"encoder grid": "CNN", "regions": "flatten, project", "attention weights":
             "score, softmax", "context": "weighted mean", "LSTM state h, c": "LSTM step",
             "word logits": "dense"}
    # Boxes left of centre, so that the notes beside the arrows stay clear of the loop's arc.
    centre = 0.42
    for axis, (title, stages) in zip(axes.flat, columns.items()):
        axis.set(xlim=(0, 1), ylim=(-0.6, len(stages) - 0.2), title=title)
        axis.axis("off")
        for index, (stage, shape) in enumerate(stages):
            y = len(stages) - 1 - index
            looped = stage in ("attention weights", "context", "LSTM state h, c", "word logits")
            axis.text(centre, y, f"{stage}\n{' × '.join(str(n) for n in shape)}",
                      ha="center", va="center", fontsize=10,
                      bbox=dict(boxstyle="round,pad=0.45", linewidth=1,
                                facecolor="#fde8d7" if looped else "#dceaf7"))
            if index:
                axis.annotate("", xy=(centre, y + 0.3), xytext=(centre, y + 0.7),
                              arrowprops=dict(arrowstyle="->", linewidth=1))
                axis.text(centre + 0.05, y + 0.5, notes.get(stage, ""), fontsize=8,
                          va="center", color="0.35")
        # Each word and the new state h feed the next step's attention: the loop over words.
        axis.annotate("", xy=(0.9, 3.0), xytext=(0.9, 0.0),
                      arrowprops=dict(arrowstyle="->", linestyle="--", color="0.4",
                                      connectionstyle="arc3,rad=-0.2"))
        axis.text(1.0, 1.5, "the word and h,\nto the next step", fontsize=8, ha="right",
                  va="center", color="0.35", rotation=90)
    figure.tight_layout()
    return figure
