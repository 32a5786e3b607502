"""Quantization-aware fine-tuning by distillation: teach the float weights to survive int8.

    python -m pipeline.export --quantize int8 --qat [--qat-epochs 8 --qat-time-budget 600]

Post-training quantization leaves MobileNetV2 at ~96% top-1 agreement with its float model at 224;
the rest is rounding, mostly of activations in the early blocks, which only the weights can learn
to tolerate (Jacob et al., arXiv:1712.05877; Krishnamoorthi, arXiv:1806.08342).

How, and why this way:
- the student is the float model with BatchNormalization folded into the convolutions
  (`pipeline.fold`: the float model every conversion starts from), so the weights it trains are
  the ones the converter rounds: each kernel fake-quantized per output channel, symmetric, narrow range
  (the converter's int8 weights), each per-tensor activation the converter stores (the input,
  every ReLU6, each linear projection, each residual Add, the pooled features, the logits) by
  `tf.quantization.fake_quant_with_min_max_vars` with the calibration min/max. Straight-through
  gradients;
- the loss is KL(teacher ‖ student) on the logits, the teacher being the untouched float model,
  re-run on each mirrored batch: no labels needed, and the int8 model is judged against exactly
  that teacher;
- each epoch is judged on the real thing: the folded weights are converted by the same per-channel
  min/max int8 path as any export and run in the interpreter on held-out calibration images. The
  simulation is not exact (the converter's bias rounding and requantization differ), so only the
  converted model's held-out KL picks the weights; epoch 0 is plain PTQ, which wins when nothing
  learned beats it. The result has the same graph, ops, size and latency as plain int8.
- TensorFlow Model Optimization's `quantize_model` needs Keras 2 (tf_keras), a second model
  definition and conversion path through learned ranges; measured in WORKSPACE_NOTES (issue 15).
Held-out images come from the calibration folder's held-out files, never from --eval. Seeded: the
same inputs and seed give the same weights.
"""

import dataclasses
import time

from pipeline.core.options import option
from pipeline.core.errors import PipelineInputError
from pipeline.stages.fold import WEIGHTED_LAYERS, consumers, fold_batchnorm

MIN_HELD_OUT_IMAGES = 32
HELD_OUT_IMAGES = 256


@dataclasses.dataclass(frozen=True)
class QatConfig:
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 1e-5  # Adam; measured at 224 in WORKSPACE_NOTES (issue 15)
    patience: int = 3  # epochs without a better held-out KL before stopping
    # An epoch replaces plain PTQ only if its held-out KL is lower by this many standard errors of
    # the paired per-image difference: a few hundred images are noisy, and a lower KL by chance
    # generalizes to nothing (measured at 96 px: WORKSPACE_NOTES, issue 15).
    min_z: float = 2.0
    time_budget_s: float = 600.0
    seed: int = 0


@dataclasses.dataclass
class QatResult:
    built: object  # BuiltModel to quantize: fine-tuned weights, or the given ones if PTQ was best
    float_model: object  # its float ConvertedModel, which the int8 conversion starts from
    epochs: list  # [{"epoch", "train_kl", "held_out_kl", "held_out_agreement", "seconds"}]
    best_epoch: int  # 0: plain PTQ was best (nothing learned is kept)
    stopped: str  # "epochs", "early stop", "time budget"
    held_out_images: int
    train_images: int
    seconds: float
    min_z: float  # how many standard errors an epoch had to beat PTQ by

    @property
    def ptq(self):
        return self.epochs[0]

    @property
    def best(self):
        return self.epochs[self.best_epoch]

    def summary_line(self):
        ptq, best = self.ptq, self.best
        if not self.best_epoch:
            return (f"✗ qat: no epoch beat plain PTQ on {self.held_out_images} held-out images "
                    f"(KL {ptq['held_out_kl']:.4f}) by {self.min_z:g} standard errors ({self.stopped}); "
                    "quantizing the weights as given")
        return (f"✓ qat: held-out KL {ptq['held_out_kl']:.4f} → {best['held_out_kl']:.4f}, "
                f"agreement {ptq['held_out_agreement']:.2%} → {best['held_out_agreement']:.2%} "
                f"(epoch {self.best_epoch}, {best['z_vs_ptq']:.1f} standard errors better; "
                f"{self.stopped}, {self.seconds:.0f} s)")

    def to_json(self):
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "stopped": self.stopped,
                "weights_sha256": self.built.weights_sha256 if self.best_epoch else None,
                "held_out_images": self.held_out_images, "train_images": self.train_images,
                "held_out_kl": {"ptq": self.ptq["held_out_kl"], "qat": self.best["held_out_kl"]},
                "held_out_agreement": {"ptq": self.ptq["held_out_agreement"],
                                       "qat": self.best["held_out_agreement"]},
                "seconds": round(self.seconds, 1)}


def _fake_quant_layers():
    """The two Keras layers, defined on first use: keras is imported lazily everywhere here."""
    import keras
    import tensorflow as tf

    class FakeQuantWeights(keras.layers.Layer):
        """`inner`'s op with its kernel rounded as the converter will: per output channel,
        symmetric, narrow range [-127, 127], scale max|w|/127."""

        def __init__(self, inner, **kwargs):
            super().__init__(name=f"{inner.name}_rounded", **kwargs)
            self.inner = inner
            self.kind = type(inner).__name__

        def call(self, x):
            inner, kernel = self.inner, self.inner.kernel
            channels = kernel.shape[2] * kernel.shape[3] if self.kind == "DepthwiseConv2D" \
                else kernel.shape[-1]
            rows = tf.reshape(kernel, [-1, channels])
            # The scale follows the weights but carries no gradient (straight-through rounding).
            bound = tf.maximum(tf.stop_gradient(tf.reduce_max(tf.abs(rows), 0)), 1e-8)
            rounded = tf.reshape(tf.quantization.fake_quant_with_min_max_vars_per_channel(
                rows, -bound, bound, num_bits=8, narrow_range=True), kernel.shape)
            if self.kind == "Conv2D":
                y = tf.nn.conv2d(x, rounded, inner.strides, inner.padding.upper(),
                                 dilations=inner.dilation_rate)
            elif self.kind == "DepthwiseConv2D":
                y = tf.nn.depthwise_conv2d(x, rounded, (1, *inner.strides, 1),
                                           inner.padding.upper(), dilations=inner.dilation_rate)
            else:
                y = tf.matmul(x, rounded)
            return inner.activation(y + inner.bias if inner.use_bias else y)

    class FakeQuantActivation(keras.layers.Layer):
        """8-bit asymmetric per-tensor rounding over a calibrated [min, max] (zero exact)."""

        def __init__(self, name, **kwargs):
            super().__init__(name=f"{name}_fake_quant", **kwargs)
            self.range = tf.Variable([0.0, 1.0], trainable=False)

        def call(self, x):
            return tf.quantization.fake_quant_with_min_max_vars(x, self.range[0], self.range[1],
                                                                num_bits=8)

    return FakeQuantWeights, FakeQuantActivation


def activation_points(folded):
    """Layers of `folded` whose output the converter stores as a per-tensor int8 activation:
    each ReLU6, Add and pooling, and each folded BN (Identity) or Dense that no ReLU follows (a
    followed one is fused into its ReLU6)."""
    consumers_of = consumers(folded)
    points = []
    for layer in folded.layers:
        kind = type(layer).__name__
        followed_by_relu = any(type(c).__name__ == "ReLU" for c in consumers_of.get(layer.name, []))
        if kind in ("ReLU", "Add", "GlobalAveragePooling2D") or \
                (kind in ("Identity", "Dense") and not followed_by_relu):
            points.append(layer.name)
    return points


def fake_quantized(folded, input_range):
    """(student, {point: its FakeQuantActivation}): `folded` with its weights and activations
    rounded as int8. The student shares `folded`'s variables: training it trains `folded`."""
    import keras

    FakeQuantWeights, FakeQuantActivation = _fake_quant_layers()
    points = set(activation_points(folded))
    activations = {}

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.Identity):
            y = layer(args[0])
        elif type(layer).__name__ in WEIGHTED_LAYERS:
            y = FakeQuantWeights(layer)(args[0])
        else:
            y = layer(*args, **kwargs)
        if layer.name in points:
            y = activations.setdefault(layer.name, FakeQuantActivation(layer.name))(y)
        return y

    traced = keras.models.clone_model(folded, clone_function=lambda layer: layer,
                                      call_function=call)
    image_rounding = FakeQuantActivation("input")
    image_rounding.range.assign(list(input_range))
    image = keras.Input(folded.input_shape[1:])
    return keras.Model(image, traced(image_rounding(image))), activations


def set_activation_ranges(folded, activations, arrays, batch_size):
    """Calibrates each fake-quant range as the converter does: min/max over `arrays`, widened to
    hold 0."""
    import keras
    import numpy as np

    names = list(activations)
    probe = keras.Model(folded.input, [folded.get_layer(n).output for n in names])
    lows, highs = np.full(len(names), np.inf), np.full(len(names), -np.inf)
    for start in range(0, len(arrays), batch_size):
        outputs = probe(arrays[start:start + batch_size], training=False)
        lows = np.minimum(lows, [float(np.min(o)) for o in outputs])
        highs = np.maximum(highs, [float(np.max(o)) for o in outputs])
    for name, low, high in zip(names, lows, highs):
        activations[name].range.assign([min(low, 0.0), max(high, 0.0, low + 1e-6)])


def _int8_parity(candidate, float_model, calibration, convert_cfg, held_out, reference,
                 store=None):
    """(per-image held-out KL, top-1 agreement) of `candidate` (a BuiltModel, with `float_model`
    its float ConvertedModel) quantized exactly as the export will."""
    from pipeline.stages import convert, parity_metrics

    converted, _ = convert.quantize(candidate, calibration.arrays, convert_cfg, float_model, store)
    metrics = parity_metrics.compare_outputs(reference, parity_metrics.tflite_logits(converted.tflite, held_out))
    return metrics["kl_per_image"], metrics["agreement_top1"]


def paired_z(baseline, candidate):
    """How many standard errors `candidate`'s per-image values lie below `baseline`'s (paired)."""
    import numpy as np

    gain = np.asarray(baseline, np.float64) - np.asarray(candidate, np.float64)
    spread = np.std(gain, ddof=1) / np.sqrt(len(gain))
    return float(np.mean(gain) / spread) if spread > 0 else 0.0


def fine_tune(built, calibration, spec, cfg, convert_cfg, float_model, store=None,
              progress=None):
    """QatResult: the BuiltModel to quantize (weights fine-tuned for int8, or `built`'s own when
    plain PTQ stays best on the held-out images) and how each epoch went.

    `calibration` is the export's CalibrationSet: its arrays train and calibrate, its held-out
    files judge. `convert_cfg` is the export's int8 configuration, which judges each epoch.
    `float_model` is `built`'s float ConvertedModel; plain PTQ is judged through `store`, so an
    export that keeps it quantizes it once (the epochs' models are not cached)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.stages import convert
    from pipeline.stages.build import weights_sha256
    from pipeline.stages.preprocess import load_images

    held_out_paths = calibration.held_out[:HELD_OUT_IMAGES]
    if len(held_out_paths) < MIN_HELD_OUT_IMAGES:
        raise PipelineInputError(
            f"--qat judges each epoch on calibration images not used to calibrate, and "
            f"{calibration.folder.root} has only {len(held_out_paths)}: add images or lower "
            f"--calibration-samples (needs {MIN_HELD_OUT_IMAGES})")
    started = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    # The teacher is the float model folded like the student (pipeline.fold): the same function,
    # without the BatchNormalization kernels whose rsqrt differs between CPUs, so the logits it
    # teaches with are the same bits on every x86 machine.
    teacher = fold_batchnorm(built.keras_model)
    train = np.asarray(calibration.arrays, np.float32)
    held_out = load_images(held_out_paths, spec).arrays.astype(np.float32)
    reference = teacher.predict(held_out, batch_size=cfg.batch_size, verbose=0)

    ptq_kl, agreement = _int8_parity(built, float_model, calibration, convert_cfg, held_out,
                                     reference, store)
    held_kl = float(np.mean(ptq_kl))
    epochs = [{"epoch": 0, "train_kl": None, "held_out_kl": round(held_kl, 6),
               "held_out_agreement": round(agreement, 4), "z_vs_ptq": None,
               "seconds": round(time.perf_counter() - started, 1)}]
    folded = fold_batchnorm(built.keras_model)  # the student's weights: a copy of their own
    if folded is built.keras_model:  # nothing to fold: train a copy, never the teacher itself
        folded = keras.models.clone_model(built.keras_model)
        folded.set_weights(built.keras_model.get_weights())
    student, activations = fake_quantized(folded, spec.value_range())
    set_activation_ranges(folded, activations, train, cfg.batch_size)
    variables = list(student.trainable_variables)
    optimizer = keras.optimizers.Adam(cfg.learning_rate)

    @tf.function(reduce_retracing=True)
    def step(images, teacher_logits):
        p = tf.nn.softmax(teacher_logits)
        with tf.GradientTape() as tape:
            log_q = tf.nn.log_softmax(student(images, training=False))
            loss = tf.reduce_mean(tf.reduce_sum(
                p * (tf.math.log(tf.maximum(p, 1e-12)) - log_q), -1))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    rng = np.random.default_rng(cfg.seed)
    best = (held_kl, 0, None, float_model)  # the chosen: lowest KL among the significant epochs
    lowest = (held_kl, 0)  # the lowest KL at all: patience counts from it
    stopped = "epochs"
    steps = max(1, len(train) // cfg.batch_size)
    bar = progress(total=cfg.epochs * steps) if progress else None
    try:
        for epoch in range(1, cfg.epochs + 1):
            epoch_start = time.perf_counter()
            order = rng.permutation(len(train))
            losses = []
            for s in range(steps):
                batch = train[np.sort(order[s * cfg.batch_size:(s + 1) * cfg.batch_size])]
                mirrored = rng.random(len(batch)) < 0.5  # augmentation; the teacher sees it too
                batch = np.where(mirrored[:, None, None, None], batch[:, :, ::-1], batch)
                losses.append(float(step(tf.constant(batch), teacher(batch, training=False))))
                if bar is not None:
                    bar.update()
                    bar.set_postfix(held_out_agreement=f"{agreement:.2%}",
                                    train_kl=f"{np.mean(losses):.4f}")
            tuned = dataclasses.replace(built, keras_model=folded)
            epoch_float = convert.convert(tuned, None, convert.ConvertConfig(
                quantize="none", head=convert_cfg.head))
            epoch_kl, agreement = _int8_parity(tuned, epoch_float, calibration, convert_cfg,
                                               held_out, reference)
            held_kl, z = float(np.mean(epoch_kl)), paired_z(ptq_kl, epoch_kl)
            seconds = time.perf_counter() - epoch_start
            epochs.append({"epoch": epoch, "train_kl": round(float(np.mean(losses)), 6),
                           "held_out_kl": round(held_kl, 6),
                           "held_out_agreement": round(agreement, 4), "z_vs_ptq": round(z, 2),
                           "seconds": round(seconds, 1)})
            if held_kl < best[0] and z >= cfg.min_z:
                best = (held_kl, epoch, folded.get_weights(), epoch_float)
            if held_kl < lowest[0]:
                lowest = (held_kl, epoch)
            elif epoch - lowest[1] >= cfg.patience:
                stopped = "early stop"
                break
            # Stop before an epoch that would end past the budget, not after it.
            if epoch < cfg.epochs and time.perf_counter() - started + seconds > cfg.time_budget_s:
                stopped = "time budget"
                break
    finally:
        if bar is not None:
            bar.close()
    if best[1] == 0:
        chosen = built
    else:
        folded.set_weights(best[2])
        tuned_note = f", fine-tuned for int8 (--qat, epoch {best[1]})"
        chosen = dataclasses.replace(built, keras_model=folded,
                                     weights_sha256=weights_sha256(folded),
                                     weights_source=built.weights_source + tuned_note,
                                     weights_name=(built.weights_name or "") + tuned_note)
    return QatResult(chosen, best[3], epochs, best[1], stopped, len(held_out), len(train),
                     time.perf_counter() - started, cfg.min_z)


OPTIONS = (
    option("bool", "qat", False,
           "Fine-tune the weights for int8 by distillation from the float model on the calibration"
           " images (quantization-aware), then convert as usual."),
    option("integer", "qat-epochs", QatConfig.epochs, "Most epochs of --qat fine-tuning."),
    option("float", "qat-learning-rate", QatConfig.learning_rate, "Adam learning rate of --qat."),
    option("float", "qat-time-budget", QatConfig.time_budget_s,
           "Seconds after which --qat starts no epoch it could not finish, keeping its best "
           "weights."),
)


def config_from_settings(settings):
    """QatConfig, or None without --qat."""
    if not settings["qat"]:
        return None
    epochs, rate, budget = (settings[f] for f in ("qat-epochs", "qat-learning-rate",
                                                  "qat-time-budget"))
    if not epochs >= 1 or not rate > 0 or not budget > 0 or rate == float("inf"):
        raise PipelineInputError(f"--qat-epochs must be at least 1 (got {epochs}), "
                                 f"--qat-learning-rate (got {rate}) and --qat-time-budget "
                                 f"(got {budget}) above 0, e.g. --qat-epochs 8")
    if settings["keep-float"]:
        raise PipelineInputError("--qat and --keep-float are two answers to the same int8 loss: "
                                 "pass one")
    if settings["quantize"] != "int8":
        raise PipelineInputError(f"--qat fine-tunes for int8: use it with --quantize int8, not "
                                 f"{settings['quantize']}")
    return QatConfig(epochs=epochs, learning_rate=rate, time_budget_s=budget,
                     seed=settings["seed"])
