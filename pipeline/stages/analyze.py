"""The structure of a MobileNetV2, read from the built Keras graph (not from the paper).

Per bottleneck block: expansion t, output channels c, stride s, input size, MACs, parameters and
the largest activation the block holds (int8 bytes). Consecutive blocks with the same t, c and
stride-1 repeats fold into the paper's (t, c, n, s) rows (arXiv:1801.04381, Table 2). MACs count
the multiply-accumulates of convolutions and the classifier, as the published table does.

    python -m pipeline.analyze --alpha 1.0 --resolution 224
"""

import dataclasses
import re

# Published MACs (millions) and parameters (millions) of MobileNetV2 (TF-slim / Keras docs).
PUBLISHED = {
    (1.4, 224): (582, 6.06), (1.3, 224): (509, 5.34),
    (1.0, 224): (300, 3.47), (1.0, 192): (221, 3.47), (1.0, 160): (154, 3.47),
    (1.0, 128): (99, 3.47), (1.0, 96): (56, 3.47),
    (0.75, 224): (209, 2.61), (0.75, 192): (153, 2.61), (0.75, 160): (107, 2.61),
    (0.75, 128): (69, 2.61), (0.75, 96): (39, 2.61),
    (0.5, 224): (97, 1.95), (0.5, 192): (71, 1.95), (0.5, 160): (50, 1.95),
    (0.5, 128): (32, 1.95), (0.5, 96): (18, 1.95),
    (0.35, 224): (59, 1.66), (0.35, 192): (43, 1.66), (0.35, 160): (30, 1.66),
    (0.35, 128): (20, 1.66), (0.35, 96): (11, 1.66),
}


@dataclasses.dataclass
class BlockRow:
    name: str
    kind: str  # conv2d | bottleneck | conv2d 1x1 | avgpool | classifier
    t: int
    c: int
    s: int
    input_size: str
    macs: int
    params: int
    activation_bytes: int  # largest int8 tensor inside the block


def layer_macs(layer):
    """Multiply-accumulates of one Keras layer (0 for layers that do none)."""
    import keras

    out_shape = tuple(layer.output.shape)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return out_shape[1] * out_shape[2] * kh * kw * out_shape[3]
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        cin = tuple(layer.input.shape)[-1]
        return out_shape[1] * out_shape[2] * kh * kw * cin * out_shape[3] // layer.groups
    if isinstance(layer, keras.layers.Dense):
        return tuple(layer.input.shape)[-1] * out_shape[-1]
    return 0


def _elements(shape):
    total = 1
    for dim in shape[1:]:
        total *= dim
    return total


def block_table(model):
    """BlockRows in graph order, grouped by the layer-name prefixes Keras' MobileNetV2 uses."""
    import keras

    groups = {}
    order = []
    for layer in model.layers:
        name = layer.name
        match = re.match(r"(block_\d+|expanded_conv)_", name)
        if match:
            key = match.group(1)
        elif name.startswith(("Conv1", "bn_Conv1")):
            key = "stem"
        elif name.startswith(("Conv_1", "out_relu")):
            key = "conv_1x1"
        elif isinstance(layer, keras.layers.GlobalAveragePooling2D):
            key = "avgpool"
        elif name in ("predictions", "predictions_logits") or "Dense" in type(layer).__name__:
            key = "classifier"
        else:
            continue
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(layer)
    rows = []
    for key in order:
        layers = groups[key]
        first_input = tuple(layers[0].input.shape)
        macs = sum(layer_macs(layer) for layer in layers)
        params = sum(layer.count_params() for layer in layers)
        largest = max(_elements(tuple(layer.output.shape)) for layer in layers)
        largest = max(largest, _elements(first_input))
        convs = [l for l in layers if type(l).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")]
        depthwise = [l for l in convs if type(l).__name__ == "DepthwiseConv2D"]
        c = tuple(layers[-1].output.shape)[-1]
        size = f"{first_input[1]}²×{first_input[-1]}" if len(first_input) == 4 else f"{first_input[-1]}"
        if depthwise:
            expand = [l for l in convs if l.name.endswith("expand")]
            t = (tuple(expand[0].output.shape)[-1] // first_input[-1]) if expand else 1
            kind, s = "bottleneck", depthwise[0].strides[0]
        else:
            t = 0
            s = convs[0].strides[0] if convs and hasattr(convs[0], "strides") else 1
            kind = {"stem": "conv2d 3x3", "conv_1x1": "conv2d 1x1", "avgpool": "avgpool",
                    "classifier": "classifier"}.get(key, key)
        rows.append(BlockRow(key, kind, t, c, s, size, macs, params, largest))
    return rows


def paper_rows(rows):
    """Fold repeats: consecutive bottlenecks with the same t and c → one (t, c, n, s) row."""
    folded = []
    for row in rows:
        if (folded and row.kind == "bottleneck" and folded[-1]["kind"] == "bottleneck"
                and folded[-1]["t"] == row.t and folded[-1]["c"] == row.c and row.s == 1):
            folded[-1]["n"] += 1
            continue
        folded.append({"kind": row.kind, "input": row.input_size, "t": row.t, "c": row.c, "n": 1,
                       "s": row.s})
    return folded


def analyze(alpha, resolution):
    from pipeline.stages import build

    built = build.build_model(build.BuildConfig(alpha=alpha, resolution=resolution, weights="random"))
    model = built.keras_model
    rows = block_table(model)
    macs = sum(layer_macs(layer) for layer in model.layers)
    params = model.count_params()
    result = {"alpha": alpha, "resolution": resolution, "macs": macs, "params": params,
              "bottleneck_blocks": sum(r.kind == "bottleneck" for r in rows),
              "strides_at": [r.name for r in rows if r.s == 2],
              "blocks": [dataclasses.asdict(r) for r in rows], "paper_rows": paper_rows(rows)}
    published = PUBLISHED.get((alpha, resolution))
    if published:
        result["published"] = {"macs_m": published[0], "params_m": published[1],
                               "macs_ratio": macs / 1e6 / published[0],
                               "params_ratio": params / 1e6 / published[1]}
    return result


def render_markdown(result):
    lines = [f"# MobileNetV2 {result['alpha']} at {result['resolution']} px", "",
             f"{result['bottleneck_blocks']} bottleneck blocks; stride 2 at "
             f"{', '.join(result['strides_at'])}. Total {result['macs'] / 1e6:.1f}M MACs, "
             f"{result['params'] / 1e6:.3f}M parameters.", ""]
    if "published" in result:
        p = result["published"]
        lines += [f"Published: {p['macs_m']}M MACs ({p['macs_ratio']:.3f}×), {p['params_m']}M "
                  f"parameters ({p['params_ratio']:.3f}×).", ""]
    lines += ["| input | operator | t | c | n | s |", "|---|---|---|---|---|---|"]
    for row in result["paper_rows"]:
        lines.append(f"| {row['input']} | {row['kind']} | {row['t'] or '—'} | {row['c']} | {row['n']} | {row['s']} |")
    lines += ["", "| block | t | c | s | input | MACs (M) | params (k) | largest int8 activation (kB) |",
              "|---|---|---|---|---|---|---|---|"]
    for row in result["blocks"]:
        lines.append(f"| {row['name']} | {row['t'] or '—'} | {row['c']} | {row['s']} | {row['input_size']} | "
                     f"{row['macs'] / 1e6:.2f} | {row['params'] / 1e3:.1f} | {row['activation_bytes'] / 1024:.0f} |")
    return "\n".join(lines) + "\n"
