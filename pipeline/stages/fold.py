"""BatchNormalization folded into the convolution before it, in float64: the float model every
conversion starts from.

Why here and not in the converter: TensorFlow folds a BatchNormalization by constant-folding
`rsqrt(σ² + ε)` with its own CPU kernel, and that kernel is an approximation (`rsqrtps` plus a
Newton step) whose last bit depends on the processor: 23% of random inputs differ from the
correctly rounded value on an AMD EPYC, and under qemu's x86 emulation the same conversion gives
another float model (WORKSPACE_NOTES, issue 25). Every weight of the int8 model, every calibrated
range and so every scale followed from those bits, so the same export gave different models on
Intel and AMD machines. Folded here with numpy in float64 (IEEE square root and division, rounded
once to float32), the kernels handed to the converter are the same bytes on every machine, and
the converter has nothing left to fold.

The folded model computes the same function (to float32 rounding: tests/test_qat.py) and has the
same layer names; each folded BatchNormalization becomes an Identity, which the converter drops.
"""

WEIGHTED_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")


def consumers(model):
    """{layer name: [layers that take its output]} of a functional Keras model."""
    found = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                found.setdefault(tensor._keras_history[0].name, []).append(layer)
    return found


def foldable(model):
    """{weighted layer name: the BatchNormalization that alone consumes its output}."""
    after_of = consumers(model)
    pairs = {}
    for layer in model.layers:
        after = after_of.get(layer.name, [])
        if type(layer).__name__ in WEIGHTED_LAYERS and len(after) == 1 and \
                type(after[0]).__name__ == "BatchNormalization":
            pairs[layer.name] = after[0]
    return pairs


def folded_weights(layer, norm):
    """[kernel, bias] of `layer` with `norm` folded in: kernel × γ/√(σ²+ε) per output channel,
    bias β + (b − μ)·γ/√(σ²+ε), computed in float64 and rounded once to float32."""
    import numpy as np

    gamma, beta, mean, var = (np.asarray(v.numpy(), np.float64) for v in (
        norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance))
    scale = gamma / np.sqrt(var + np.float64(norm.epsilon))
    kernel, *rest = [np.asarray(w, np.float64) for w in layer.get_weights()]
    bias = rest[0] if layer.use_bias else np.zeros_like(scale)
    if type(layer).__name__ == "DepthwiseConv2D":  # kernel (h, w, in, multiplier): channel in·m + j
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    return [kernel.astype(np.float32), (beta + (bias - mean) * scale).astype(np.float32)]


def fold_batchnorm(model):
    """`model` with each BatchNormalization that follows a convolution or Dense folded into it and
    replaced by an Identity: the same function, in the weights the converter will round. A model
    with nothing to fold is returned as it is. (A BatchNormalization that follows no weighted layer
    is left to the converter, whose fold is the CPU-dependent one above; MobileNetV2 has none.)"""
    import keras

    pairs = foldable(model)
    if not pairs:
        return model
    folded = {name: folded_weights(model.get_layer(name), norm) for name, norm in pairs.items()}
    folded_norms = {norm.name for norm in pairs.values()}

    def clone(layer):
        if layer.name in folded_norms:
            return keras.layers.Identity(name=layer.name)
        config = layer.get_config()
        if layer.name in folded:
            config["use_bias"] = True
        return type(layer).from_config(config)

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.Identity):  # BN's `training` argument has no place here
            return layer(args[0])
        return layer(*args, **kwargs)

    result = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in result.layers:
        if layer.name in folded:
            layer.set_weights(folded[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return result
