"""A DeepLabV3+ diagram read from a built model: blocks, strides, channels and shapes.

:func:`architecture_blocks` walks the model's own layers, so the picture changes when the
model does (another backbone, stride, head width or ASPP rates). :func:`plot_architecture`
draws it, and can mark where the reference tutorial tapped its ResNet50.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch


@dataclass(frozen=True)
class Block:
    """One box of the diagram: ``layer`` is the model layer whose output it shows."""

    part: str  # "input", "encoder", "aspp", "decoder" or "output"
    label: str
    layer: str
    shape: tuple[int, int, int]  # height, width, channels for the diagram's input size
    stride: int
    feeds: str = ""  # for an encoder tap: the layer of the ASPP or decoder box it also feeds


def inbound_layers(model: keras.Model) -> dict[str, list[str]]:
    """Layer name -> names of the layers feeding it, read from the model's config."""

    def producers(value) -> list[str]:
        if isinstance(value, dict):
            history = value.get("config", {}).get("keras_history") if value.get("class_name") else None
            if history:
                return [history[0]]
            return [name for item in value.values() for name in producers(item)]
        if isinstance(value, list | tuple):
            return [name for item in value for name in producers(item)]
        return []

    return {layer["name"]: producers(layer.get("inbound_nodes", [])) for layer in model.get_config()["layers"]}


def wiring(model: keras.Model) -> list[tuple[str, dict, list[tuple], list[int]]]:
    """Each layer's type, settings (its config without the name), weight shapes and the positions of the
    layers feeding it. Two models with equal wiring compute the same function of their weights,
    whatever their layers are named."""
    position = {layer.name: i for i, layer in enumerate(model.layers)}
    feeds = inbound_layers(model)
    return [
        (
            type(layer).__name__,
            {key: value for key, value in layer.get_config().items() if key != "name"},
            [tuple(w.shape) for w in layer.weights],
            [position[n] for n in feeds[layer.name]],
        )
        for layer in model.layers
    ]


def output_shapes(model: keras.Model, names: list[str], size: int) -> dict[str, tuple[int, int, int]]:
    """Output shape (without the batch) of each named layer for a ``size x size`` RGB input."""
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    specs = probe.compute_output_spec(keras.KerasTensor((1, size, size, 3)))
    return {n: tuple(int(d) for d in spec.shape[1:]) for n, spec in zip(names, specs)}


def _encoder_stages(model: keras.Model, taps: list[str], high: str, size: int) -> list[tuple[str, int]]:
    """One layer per encoder stride up to the ASPP input ``high``: the last layer at that stride,
    except that each decoder tap in ``taps`` stands for its own stride. Padding layers are skipped."""
    order = [layer.name for layer in model.layers]
    candidates = [
        layer.name
        for layer in model.layers[1 : order.index(high) + 1]
        if len(layer.output.shape) == 4 and not isinstance(layer, keras.layers.ZeroPadding2D)
    ]
    shapes = output_shapes(model, candidates, size)
    last_at: dict[int, str] = {}
    for name in candidates:  # in model order, so a later layer at the same stride replaces an earlier one
        if size % shapes[name][0] == 0:
            last_at[size // shapes[name][0]] = name
    for tap in taps:
        last_at[size // shapes[tap][0]] = tap
    return [(name, stride) for stride, name in sorted(last_at.items()) if stride > 1]


# the 1x1 convolutions that take an encoder tap: ASPP's first branch, the decoder's and the stride-2 step's projections
ASPP_IN, DECODER_IN, REFINE_IN = "aspp_1x1", "decoder_low_level", "refine_low_level"


def architecture_blocks(model: keras.Model, size: int = 256) -> list[Block]:
    """The model's DeepLabV3+ blocks in data-flow order, with shapes for a ``size x size`` input.

    ``size`` must be a multiple of the output stride, so that every stride is a whole number.
    """
    inbound = inbound_layers(model)
    high, low = inbound[ASPP_IN][0], inbound[DECODER_IN][0]
    fine = inbound[REFINE_IN][0] if REFINE_IN in inbound else None  # the optional stride-2 step
    rates = sorted(int(m.group(1)) for layer in model.layers if (m := re.fullmatch(r"aspp_rate(\d+)_relu", layer.name)))
    plan = [("input", "image", model.layers[0].name, "")]  # (part, label, layer, the layer a tap feeds)
    roles = {
        high: (" (to ASPP)", ASPP_IN),
        low: (" (to the decoder)", DECODER_IN),
        fine: (" (to the stride-2 step)", REFINE_IN),
    }
    for name, _ in _encoder_stages(model, [low] + ([fine] if fine else []), high, size):
        suffix, target = roles.get(name, ("", ""))
        plan.append(("encoder", f"{name}{suffix}", name, target and f"{target}_relu"))
    plan += [("aspp", "1x1 conv", f"{ASPP_IN}_relu", "")]
    plan += [("aspp", f"3x3 conv, rate {r}", f"aspp_rate{r}_relu", "") for r in rates]
    plan += [
        ("aspp", "image pooling", "aspp_pool_resize", ""),
        ("aspp", "concatenate + 1x1 projection", "aspp_project_relu", ""),
        ("decoder", "low-level 1x1 projection", f"{DECODER_IN}_relu", ""),
        ("decoder", "upsample ASPP + concatenate", "decoder_concat", ""),
        ("decoder", "two 3x3 convs", "decoder_conv2_relu", ""),
    ]
    if fine:
        plan += [
            ("decoder", "stride-2 1x1 projection", f"{REFINE_IN}_relu", ""),
            ("decoder", "upsample + concatenate", "refine_concat", ""),
            ("decoder", "one 3x3 conv", "refine_conv1_relu", ""),
        ]
    plan += [
        ("output", "1x1 conv: class scores", "logits", ""),
        ("output", "upsample to the input size", "upsample_to_input", ""),
    ]
    shapes = output_shapes(model, [layer for _, _, layer, _ in plan], size)
    return [
        Block(part, label, layer, shapes[layer], size // shapes[layer][0], target)
        for part, label, layer, target in plan
    ]


LEFT = 2.6  # room left of the encoder for notes
COLOURS = {"input": "#dddddd", "encoder": "#a6cee3", "aspp": "#fdbf6f", "decoder": "#b2df8a", "output": "#cab2d6"}


def plot_architecture(model: keras.Model, size: int = 256, reference_taps: dict[str, int] | None = None):
    """Draw :func:`architecture_blocks` as one column of boxes per part, with arrows for the data flow.

    ``reference_taps`` maps a description to a stride, e.g. ``{"tutorial's low-level tap": 16}``;
    each is drawn as a red note beside the encoder stage at that stride, or below the encoder
    when the model has no stage at that stride.
    """
    blocks = architecture_blocks(model, size)
    columns = {"input": 0, "encoder": 0, "aspp": 1, "decoder": 2, "output": 2}
    rows: dict[int, int] = {}
    where = {}
    for block in blocks:
        column = columns[block.part]
        where[block.layer] = (LEFT + column * 4.2, -rows.get(column, 0) * 1.0)
        rows[column] = rows.get(column, 0) + 1
    height = max(rows.values()) + 0.5 * len(reference_taps or {}) + 0.6
    fig, ax = plt.subplots(figsize=(15, 0.62 * height + 1))
    for block in blocks:
        x, y = where[block.layer]
        h, w, c = block.shape
        ax.add_patch(
            FancyBboxPatch((x, y - 0.38), 3.6, 0.76, boxstyle="round,pad=0.02", fc=COLOURS[block.part], ec="black")
        )
        ax.text(x + 1.8, y + 0.12, block.label, ha="center", va="center", fontsize=8)
        ax.text(x + 1.8, y - 0.2, f"{h}x{w}x{c}, stride {block.stride}", ha="center", va="center", fontsize=8)
    _draw_flow(ax, blocks, where)
    _draw_reference_taps(ax, blocks, where, reference_taps or {})
    ax.set_xlim(0, LEFT + 12.6)
    ax.set_ylim(-height + 0.5, 1.0)
    ax.axis("off")
    ax.set_title(f"{model.name}: {model.count_params():,} parameters, shapes for a {size}x{size} input")
    for part, column in (("encoder", 0), ("ASPP", 1), ("decoder and output", 2)):
        ax.text(LEFT + column * 4.2 + 1.8, 0.75, part, ha="center", fontsize=10, weight="bold")
    return fig


def _arrow(ax, start, end, colour="black") -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": colour, "lw": 1})


def _draw_flow(ax, blocks: list[Block], where: dict) -> None:
    encoder = [b for b in blocks if b.part in ("input", "encoder")]
    for above, below in zip(encoder, encoder[1:]):
        (x0, y0), (x1, y1) = where[above.layer], where[below.layer]
        _arrow(ax, (x0 + 1.8, y0 - 0.4), (x1 + 1.8, y1 + 0.4))
    branches = [b for b in blocks if b.part == "aspp"]
    aspp_input = next(b for b in encoder if b.feeds in {branch.layer for branch in branches})
    xa, ya = where[aspp_input.layer]
    for branch in branches[:-1]:
        x, y = where[branch.layer]
        _arrow(ax, (xa + 3.6, ya), (x, y))
        _arrow(ax, (x + 3.6, y), (x + 3.6, where[branches[-1].layer][1] + 0.38))
    head = [b for b in blocks if b.part in ("decoder", "output")]
    # each skip goes over the ASPP column, so it cannot be read as an input to ASPP; the stride-2
    # step's skip (if any) starts higher in the encoder and runs above and inside the stride-4 one
    skips = sorted((b for b in encoder if b.feeds in {h.layer for h in head}), key=lambda b: -b.stride)
    over = max(y for _, y in where.values()) + 0.55
    for k, tap in enumerate(skips):
        _draw_skip(ax, where[tap.layer], where[tap.feeds], over + 0.25 * k, 0.12 * (len(skips) - k))
    xp, yp = where[branches[-1].layer]
    _arrow(ax, (xp + 3.6, yp), where[head[1].layer])
    for above, below in zip(head, head[1:]):
        (x0, y0), (x1, y1) = where[above.layer], where[below.layer]
        if below.layer == f"{REFINE_IN}_relu":  # the decoder's output goes past it, into the concatenation
            joined, side = where[head[head.index(below) + 1].layer][1], x0 + 3.6
            ax.plot([side, side + 0.15, side + 0.15], [y0, y0, joined], color="black", lw=1)
            _arrow(ax, (side + 0.15, joined), (side, joined))
        else:
            _arrow(ax, (x0 + 1.8, y0 - 0.4), (x1 + 1.8, y1 + 0.4))


def _draw_skip(ax, start: tuple[float, float], end: tuple[float, float], height: float, inset: float) -> None:
    """A skip connection from an encoder box's right edge, over the ASPP column, into a decoder box's left edge."""
    (xs, ys), (xe, ye) = start, end
    path = [(xs + 3.6, ys), (xs + 3.6 + inset, ys), (xs + 3.6 + inset, height), (xe - inset, height), (xe - inset, ye)]
    ax.plot(*zip(*path), color="tab:blue", lw=1)
    _arrow(ax, path[-1], (xe, ye), colour="tab:blue")


def _draw_reference_taps(ax, blocks: list[Block], where: dict, taps: dict[str, int]) -> None:
    encoder = [b for b in blocks if b.part == "encoder"]
    bottom = min(where[b.layer][1] for b in blocks)
    for k, (note, stride) in enumerate(taps.items()):
        stage = next((b for b in encoder if b.stride == stride), None)
        if stage is None:
            x, y = LEFT, bottom - 0.8 - 0.45 * k
            ax.text(x, y, f"{note}: stride {stride}, which this encoder does not have", color="red", fontsize=8)
            continue
        x, y = where[stage.layer]
        ax.text(x - 0.25, y, f"{note} ", color="red", fontsize=8, ha="right", va="center")
        ax.plot([x - 0.2, x], [y, y], color="red", lw=2)
