"""Figures and tables render (headless) and hold what they were given."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from utils import viz  # noqa: E402


def test_table_formats_floats_and_keeps_order():
    html = viz.table({"greedy": {"Bleu_4": 0.85, "count": 3}, "beam 3": {"Bleu_4": 0.9}}).data
    assert html.index("greedy") < html.index("beam 3")
    assert "<td>0.850</td>" in html and "<td>3</td>" in html


def test_figures_have_one_panel_per_item():
    pixels = np.zeros((5, 64, 64, 3), np.uint8)
    assert len([a for a in viz.show_images(pixels, ["a"] * 5, columns=4).axes if a.images]) == 5
    attention = np.full((3, 64), 1 / 64)
    assert len([a for a in viz.show_attention(pixels[0], ["a", "b", "c"], attention).axes if a.images]) == 3
    history = {"loss": [2.0, 1.0], "val_loss": [2.1, 1.2], "val_exact": [0.1, 0.5]}
    assert len(viz.plot_history(history).axes) == 2
    assert viz.plot_by_setting({"1": {"x": 0.1}, "3": {"x": 0.2}}, ["x"]).axes[0].lines


def test_history_plots_cider_on_its_own_axis():
    """CIDEr-D runs to 10, the other scores to 1: on one axis they would be pressed flat."""
    history = {"loss": [2.0, 1.0], "val_loss": [2.1, 1.2], "val_exact": [0.1, 0.5],
               "val_bleu4": [0.3, 0.6], "val_cider": [1.8, 4.6]}
    loss, scores, cider = viz.plot_history(history).axes
    assert [line.get_label() for line in scores.lines] == ["val_exact", "val_bleu4"]
    assert [line.get_label() for line in cider.lines] == ["val_cider"]
    assert scores.get_ylim() == (0, 1.05) and cider.get_ylim()[1] >= 4.6
    legend = [text.get_text() for text in scores.get_legend().get_texts()]
    assert legend == ["val_exact", "val_bleu4", "val_cider"]
