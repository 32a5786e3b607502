"""MobileNetV2's layer and block names, as they survive in a converted model's tensor names.

The converter names an op's output tensor after the Keras layer it came from
('model_1/block_3_depthwise_relu_1/Relu6;…'); the per-layer diagnosis, --keep-float and the
selective-quantization search all speak in those names (block_3, Conv1, block_3_depthwise_relu).
"""

import re


def layer_name(tensor_name):
    """'model_1/block_3_depthwise_relu_1/Relu6;…' → 'block_3_depthwise_relu'."""
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    name = parts[1] if len(parts) > 1 else parts[0]
    return re.sub(r"_\d+$", "", name)


def layer_group(tensor_name):
    """The MobileNetV2 block an op belongs to (block_3, expanded_conv, Conv1, …), else the layer.

    Measured here: keeping single layers in float barely moves agreement (errors are spread
    through a block and compound), whole early blocks do; so the search adds blocks."""
    name = layer_name(tensor_name)
    match = re.match(r"(block_\d+|expanded_conv|Conv1|Conv_1)", name)
    return match.group(1) if match else name
