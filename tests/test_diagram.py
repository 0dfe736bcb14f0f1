"""The architecture diagram is read from the model: every block, stride and shape, for both backbones."""

import keras
import matplotlib.pyplot as plt
import pytest

from helpers import diagram
from helpers.backbones import TAPS
from helpers.model import build_deeplabv3_plus


@pytest.fixture(scope="module", params=["mobilenetv2", "resnet50"])
def built(request):
    return request.param, build_deeplabv3_plus(5, backbone=request.param, weights=None, separable=True)


def test_blocks_name_the_taps_rates_and_shapes(built):
    backbone, model = built
    blocks = diagram.architecture_blocks(model, 256)
    by_layer = {b.layer: b for b in blocks}
    low, high = TAPS[backbone]["low"], TAPS[backbone]["high"]
    assert by_layer[low].stride == 4 and by_layer[low].label == f"{low} (to the decoder)"
    assert by_layer[high].stride == 16 and by_layer[high].label == f"{high} (to ASPP)"
    assert [b.stride for b in blocks if b.part == "encoder"] == [2, 4, 8, 16]
    feeds = {b.layer: b.feeds for b in blocks if b.feeds}  # what the arrows are drawn from
    assert feeds == {low: "decoder_low_level_relu", high: "aspp_1x1_relu"}
    assert [b.label for b in blocks if "rate" in b.label] == [
        "3x3 conv, rate 6",
        "3x3 conv, rate 12",
        "3x3 conv, rate 18",
    ]
    filters = model.get_layer("aspp_project").filters
    assert by_layer["aspp_project_relu"].shape == (16, 16, filters)
    assert by_layer["decoder_concat"].shape == (64, 64, filters + 48)
    assert blocks[-1].shape == (256, 256, 5) and blocks[-1].stride == 1
    assert blocks[0].shape == (256, 256, 3)


def test_blocks_follow_the_model_when_it_changes():
    model = build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None, aspp_rates=(2, 4), decoder_filters=32)
    blocks = diagram.architecture_blocks(model, 128)
    assert [b.label for b in blocks if "rate" in b.label] == ["3x3 conv, rate 2", "3x3 conv, rate 4"]
    assert {b.layer: b for b in blocks}["aspp_project_relu"].shape == (8, 8, 32)


def test_figure_shows_every_block_and_the_reference_taps(built):
    _, model = built
    fig = diagram.plot_architecture(model, 256, reference_taps={"tutorial's ASPP input": 32, "its low-level": 16})
    texts = [t.get_text() for t in fig.axes[0].texts]
    for block in diagram.architecture_blocks(model, 256):
        assert block.label in texts
        assert f"{block.shape[0]}x{block.shape[1]}x{block.shape[2]}, stride {block.stride}" in texts
    assert "its low-level " in texts
    assert any(t.startswith("tutorial's ASPP input: stride 32, which this encoder does not have") for t in texts)
    plt.close(fig)


def assert_lines_cross_no_box(ax, lines):
    boxes = [patch.get_bbox() for patch in ax.patches]
    for line in lines:
        xs, ys = line.get_data()
        for (x0, y0), (x1, y1) in zip(zip(xs, ys), list(zip(xs, ys))[1:]):
            for box in boxes:  # each segment is horizontal or vertical: it crosses a box if it overlaps its extent
                overlap_x = min(x0, x1) < box.x1 and max(x0, x1) > box.x0
                overlap_y = min(y0, y1) < box.y1 and max(y0, y1) > box.y0
                assert not (overlap_x and overlap_y), f"a line crosses a box at x {box.x0:.1f}, y {box.y0:.1f}"


def test_the_skip_connection_is_drawn_around_the_aspp_boxes(built):
    _, model = built
    fig = diagram.plot_architecture(model, 256)
    ax = fig.axes[0]
    (skip,) = [line for line in ax.lines if line.get_color() == "tab:blue"]
    assert_lines_cross_no_box(ax, [skip])
    xs = skip.get_data()[0]
    aspp_left = min(patch.get_bbox().x0 for patch in ax.patches if patch.get_bbox().x0 > min(xs))
    assert min(xs) < aspp_left < max(xs)  # it does pass the ASPP column, over it
    plt.close(fig)


def test_the_optional_stride_2_step_is_drawn_with_its_own_skip(built):
    backbone, _ = built
    model = build_deeplabv3_plus(5, backbone=backbone, weights=None, separable=True, fine_level_channels=16)
    blocks = diagram.architecture_blocks(model, 256)
    by_layer = {b.layer: b for b in blocks}
    fine = TAPS[backbone]["fine"]
    assert by_layer[fine].stride == 2 and by_layer[fine].label == f"{fine} (to the stride-2 step)"
    assert by_layer[fine].feeds == "refine_low_level_relu"
    head = [b.label for b in blocks if b.part == "decoder"]
    assert head[3:] == ["stride-2 1x1 projection", "upsample + concatenate", "one 3x3 conv"]
    assert by_layer["refine_concat"].shape == (128, 128, model.get_layer("decoder_conv2").filters + 16)
    assert by_layer["logits"].stride == 2
    fig = diagram.plot_architecture(model, 256)
    ax = fig.axes[0]
    skips = [line for line in ax.lines if line.get_color() == "tab:blue"]
    assert len(skips) == 2
    assert_lines_cross_no_box(ax, ax.lines)  # both skips, and the decoder's output going past the projection
    # a box's label sits 0.12 above its middle, where its lines start and end
    row = {text.get_text(): round(text.get_position()[1] - 0.12, 6) for text in ax.texts}
    low = TAPS[backbone]["low"]
    ends = {(round(line.get_ydata()[0], 6), round(line.get_ydata()[-1], 6)): max(line.get_ydata()) for line in skips}
    from_fine = (row[f"{fine} (to the stride-2 step)"], row["stride-2 1x1 projection"])
    from_low = (row[f"{low} (to the decoder)"], row["low-level 1x1 projection"])
    assert set(ends) == {from_fine, from_low}  # each skip runs from its tap to the projection it feeds
    assert ends[from_fine] > ends[from_low]  # the stride-2 skip starts higher, so it runs above the other
    plt.close(fig)


def test_wiring_tells_models_apart_that_layer_lists_do_not():
    def tiny(second_input_of_add):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        y = keras.layers.Conv2D(4, 3, padding="same")(x)
        return keras.Model(inputs, keras.layers.Add()([y, x if second_input_of_add == "x" else y]))

    a, b = tiny("x"), tiny("y")
    layers_only = [[(type(layer).__name__, [w.shape for w in layer.weights]) for layer in m.layers] for m in (a, b)]
    assert layers_only[0] == layers_only[1]
    assert diagram.wiring(a) != diagram.wiring(b)
    assert diagram.wiring(a) == diagram.wiring(tiny("x"))
    assert diagram.wiring(a)[-1][0] == "Add" and diagram.wiring(a)[-1][2:] == ([], [2, 1])


def test_wiring_compares_settings_that_weight_shapes_do_not_show():
    default = build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None)
    assert diagram.wiring(default) == diagram.wiring(build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None))
    other_rates = build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None, aspp_rates=(2, 4, 6))
    assert [w[2:] for w in diagram.wiring(other_rates)] == [w[2:] for w in diagram.wiring(default)]  # same shapes
    assert diagram.wiring(other_rates) != diagram.wiring(default)  # different dilation rates
