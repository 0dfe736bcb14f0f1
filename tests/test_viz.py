import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from helpers import viz  # noqa: E402


def test_known_palette_and_ignore_colour():
    palette = viz.make_palette(["background", "road", "car", "pedestrian", "building"])
    assert tuple(palette[1]) == (128, 64, 128)
    assert tuple(palette[255]) == viz.IGNORE_COLOUR
    other = viz.make_palette(["a", "b", "c"])
    assert len({tuple(c) for c in other[:3]}) == 3


def test_colorize_and_overlay_values():
    palette = viz.make_palette(["a", "b"])
    mask = np.array([[0, 1], [1, 255]], np.uint8)
    rgb = viz.colorize(mask, palette)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 1], palette[1])
    image = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_array_equal(viz.overlay(image, mask, palette, 0.0), image)
    np.testing.assert_array_equal(viz.overlay(image, mask, palette, 1.0), rgb)


def test_error_map_colours():
    true = np.array([[0, 1, 255]])
    pred = np.array([[0, 2, 1]])
    out = viz.error_map(true, pred, 255)
    assert tuple(out[0, 0]) == (40, 170, 60) and tuple(out[0, 1]) == (215, 40, 40) and tuple(out[0, 2]) == (150,) * 3


def test_panels_and_plots_draw():
    classes = ["a", "b", "c"]
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.random.default_rng(0).integers(0, 3, (8, 8))
    fig = viz.plot_panels(image, mask, mask, classes, ignore_index=255)
    titles = ["image", "ground truth", "prediction", "errors (0.0% of labelled pixels)"]
    assert [ax.get_title() for ax in fig.axes] == titles
    truth = np.zeros((4, 4), np.int64)
    truth[0] = 255  # a row of ignored pixels does not count as right or wrong
    predicted = np.where(np.arange(16).reshape(4, 4) < 6, 1, 0)  # 2 of the 12 labelled pixels wrong
    fig = viz.plot_panels(np.zeros((4, 4, 3), np.uint8), truth, predicted, classes, ignore_index=255)
    assert fig.axes[3].get_title() == "errors (16.7% of labelled pixels)"
    ax = viz.plot_confusion_matrix(np.eye(3) * 5, classes)
    assert len(ax.texts) == 9
    ax = viz.plot_class_bars([0.5, np.nan, 1.0], classes)
    assert [t.get_text() for t in ax.texts] == ["0.50", "absent", "1.00"]
    ax = viz.plot_class_bars([0.003, 0.0, 0.997], classes)  # a rare class is not shown as 0.00
    assert [t.get_text() for t in ax.texts] == ["0.003", "0.00", "1.00"]
