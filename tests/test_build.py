import numpy as np
import pytest

from pipeline.core.files import file_sha256
from pipeline.stages import build
from pipeline.core.errors import PipelineInputError
from tests.conftest import NO_NETWORK, SHARED, WEIGHTS_DIR, needs_shared


def test_small_model_outputs_logits_with_imagenet_labels(small_built):
    model = small_built.keras_model
    assert tuple(model.inputs[0].shape) == (None, 96, 96, 3)
    assert tuple(model.outputs[0].shape) == (None, 1000)
    # Logits, not probabilities: the classifier's softmax is stripped for parity metrics.
    assert model.layers[-1].activation.__name__ == "linear"
    assert small_built.output_kind == "logits"
    assert small_built.labels[0] == "tench" and len(small_built.labels) == 1000
    assert small_built.synsets[0] == "n01440764"
    assert small_built.name == "mobilenet_v2_0.35_96"


@needs_shared("data", "imagenet_synsets.txt")
def test_imagenet_labels_follow_keras_class_order():
    names, synsets = build.imagenet_labels()
    lines = (SHARED / "data" / "imagenet_synsets.txt").read_text().splitlines()
    assert synsets == [line.split(" ", 1)[0] for line in lines]
    assert len(set(names)) == 1000, "labels must be unique"
    different = [i for i, (name, line) in enumerate(zip(names, lines))
                 if name != line.split(" ", 1)[1].split(",")[0].strip()]
    # Only the two ambiguous names differ (shared spells them crane_bird, maillot_1, maillot_2).
    assert different == [134, 517, 638, 639]
    assert names[134] == "crane (n02012849)" and names[517] == "crane (n03126707)"


def test_random_weights_are_seeded():
    a = build.build_model(build.BuildConfig(alpha=0.35, resolution=96, weights="random", seed=1))
    b = build.build_model(build.BuildConfig(alpha=0.35, resolution=96, weights="random", seed=1))
    c = build.build_model(build.BuildConfig(alpha=0.35, resolution=96, weights="random", seed=2))
    assert a.weights_sha256 == b.weights_sha256
    assert a.weights_sha256 != c.weights_sha256


@pytest.mark.parametrize(
    "cfg, words",
    [
        (build.BuildConfig(alpha=0.4), "--alpha 0.4"),
        (build.BuildConfig(resolution=64), "--resolution 64"),
        (build.BuildConfig(classes=5), "1000-class head"),
        (build.BuildConfig(weights="/nonexistent/w.weights.h5"), "no such file"),
    ],
)
def test_bad_build_config_is_refused(cfg, words):
    with pytest.raises(PipelineInputError, match=words):
        build.build_model(cfg)


@pytest.fixture(scope="module")
def saved_weights(small_built, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    model = small_built.keras_model
    model.save_weights(folder / "small.weights.h5")
    model.save(folder / "small.keras")
    model.save(folder / "small.h5")  # legacy HDF5 (Keras 2 layout)
    return folder


@pytest.mark.parametrize("name", ["small.weights.h5", "small.keras", "small.h5"])
def test_weights_files_load_in_every_format(saved_weights, small_built, name):
    built = build.build_model(build.BuildConfig(
        alpha=0.35, resolution=96, weights=str(saved_weights / name)))
    assert built.weights_sha256 == file_sha256(saved_weights / name)
    for loaded, original in zip(built.keras_model.get_weights(), small_built.keras_model.get_weights()):
        np.testing.assert_array_equal(loaded, original)


@pytest.mark.parametrize("name", ["small.weights.h5", "small.keras", "small.h5"])
def test_weights_for_another_alpha_are_refused(saved_weights, name):
    with pytest.raises(PipelineInputError, match="does not fit MobileNetV2 alpha=0.5"):
        build.build_model(build.BuildConfig(alpha=0.5, resolution=96, weights=str(saved_weights / name)))


@pytest.mark.parametrize("name", ["small.keras", "small.h5"])
def test_weights_saved_for_another_resolution_are_refused(saved_weights, name):
    with pytest.raises(PipelineInputError, match="saved for 96 px input.*--resolution 96"):
        build.build_model(build.BuildConfig(alpha=0.35, resolution=128, weights=str(saved_weights / name)))


def test_weights_file_that_is_not_hdf5_is_refused(tmp_path):
    fake = tmp_path / "model.weights.h5"
    fake.write_text("not weights")
    with pytest.raises(PipelineInputError, match="is not an HDF5 file"):
        build.build_model(build.BuildConfig(alpha=0.35, resolution=96, weights=str(fake)))


def _lambda_model(path, marker):
    import keras

    inputs = keras.Input((32, 32, 3))
    # If this Lambda ever ran during loading, it would create `marker`.
    code = eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]")  # path as a literal
    x = keras.layers.Lambda(code)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x)).save(path)


def test_model_with_lambda_layer_is_refused_not_executed(tmp_path):
    path, marker = tmp_path / "evil.keras", tmp_path / "ran.txt"
    _lambda_model(path, marker)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once; reset
    with pytest.raises(PipelineInputError, match="refused to load .*Lambda"):
        build.build_model(build.BuildConfig(model_path=str(path)))
    assert not marker.exists()


def test_whole_keras_classifier_has_its_softmax_stripped(tmp_path):
    import keras

    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "flowers.keras")
    labels = tmp_path / "labels.txt"
    labels.write_text("daisy\ndandelion\nroses\nsunflowers\ntulips\n")
    built = build.build_model(build.BuildConfig(model_path=str(tmp_path / "flowers.keras"),
                                                labels_path=str(labels)))
    assert built.resolution == 64 and built.labels[2] == "roses" and built.synsets is None
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    logits = built.keras_model.predict(x, verbose=0)
    probabilities = model.predict(x, verbose=0)
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True),
                               probabilities, atol=1e-6)


def test_labels_file_must_match_the_head(tmp_path, small_built):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(PipelineInputError, match="has 2 labels but the model has 1000 outputs"):
        build.build_model(build.BuildConfig(alpha=0.35, resolution=96, weights="random",
                                            labels_path=str(labels)))


def test_imagenet_weights_come_from_keras_cache(keras_home):
    built = build.build_model(build.BuildConfig())
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5" in built.weights_source
    assert built.weights_sha256 == file_sha256(
        WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5")
    # Published MobileNetV2 1.0/224: 3.4M parameters (3.5M with the 1000-way classifier).
    assert 3.4e6 < built.architecture["params"] < 3.6e6


def test_imagenet_weights_offline_without_cache_fail_clearly(monkeypatch):
    # 0.5/128 is not in the test KERAS_HOME, and the download goes nowhere, network or not.
    for name, value in NO_NETWORK.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(PipelineInputError, match=r"not cached and could not be downloaded"):
        build.build_model(build.BuildConfig(alpha=0.5, resolution=128))
