"""TFLite Metadata in the exported model, read back by MediaPipe's own reader (and tflite-support's
compiled version checker where it installs)."""

import pytest

from pipeline.stages import metadata

INFO = metadata.ModelInfo(name="MobileNetV2 test", description="a test model", version="3",
                          author="the team", license="Apache-2.0")


@pytest.fixture(scope="module")
def labelled_model(small_int8, small_built):
    model = metadata.write_image_classifier_metadata(
        small_int8.tflite, INFO, small_built.labels, [127.0], [127.5], "RGB image, 96x96",
        "Probabilities of the 1000 classes")
    return model


def test_metadata_carries_names_labels_and_normalization(labelled_model, small_built):
    found, files = metadata.read_metadata(labelled_model)
    assert (found["name"], found["version"], found["author"], found["license"]) == (
        "MobileNetV2 test", "3", "the team", "Apache-2.0")
    subgraph = found["subgraph_metadata"][0]
    image = subgraph["input_tensor_metadata"][0]
    assert image["content"]["content_properties"]["color_space"] == "RGB"
    assert image["process_units"][0]["options"] == {"mean": [127.0], "std": [127.5]}
    output = subgraph["output_tensor_metadata"][0]
    assert output["description"] == "Probabilities of the 1000 classes"
    assert output["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    assert files["labels.txt"].decode().splitlines() == small_built.labels
    assert found["min_parser_version"] == "1.0.0"


def test_metadata_is_deterministic_and_leaves_the_graph_alone(labelled_model, small_int8, monkeypatch):
    import io
    import time
    import zipfile

    # The writer stamps each packed file with the clock (zipfile's time.localtime): two writes at
    # two clock times a day apart must give the same bytes, every entry at the fixed time.
    local_time = time.localtime

    def written_at(seconds):
        monkeypatch.setattr(time, "localtime", lambda _=None: local_time(seconds))
        try:
            return metadata.write_image_classifier_metadata(
                small_int8.tflite, INFO, [f"c{i}" for i in range(1000)], [127.0], [127.5],
                "RGB image, 96x96", "Probabilities of the 1000 classes")
        finally:
            monkeypatch.setattr(time, "localtime", local_time)

    again = written_at(1_700_000_000)
    assert written_at(1_700_086_400) == again
    with zipfile.ZipFile(io.BytesIO(again)) as packed:
        assert {info.date_time for info in packed.infolist()} == {metadata.FIXED_ZIP_TIME}
    # The interpreter sees the same graph: same outputs on the same input.
    import numpy as np

    from pipeline.device.runner import Runner, load_runtime

    _, _, module = load_runtime()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
    plain = Runner(module, model_content=small_int8.tflite)(x)
    assert np.array_equal(plain, Runner(module, model_content=labelled_model)(x))


def test_a_model_without_metadata_reads_as_none(small_int8):
    assert metadata.read_metadata(small_int8.tflite) == (None, {})


def _native_version_checker():
    """tflite-support's compiled GetMinimumMetadataParserVersion, where it imports."""
    try:
        from tensorflow_lite_support.metadata.cc.python import _pywrap_metadata_version
    except ImportError as error:
        pytest.skip(f"tflite-support's native metadata module does not import here ({error})")
    return _pywrap_metadata_version.GetMinimumMetadataParserVersion


def _metadata_buffers():
    """Metadata flatbuffers that exercise each versioned schema member, built with the schema's
    own object API."""
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    def finish(model):
        builder = flatbuffers.Builder(0)
        builder.Finish(model.Pack(builder), b"M001")
        return bytes(builder.Output())

    def tensor(**fields):
        t = fb.TensorMetadataT()
        for key, value in fields.items():
            setattr(t, key, value)
        return t

    def model_with(subgraph=None, files=None):
        m = fb.ModelMetadataT()
        m.subgraphMetadata = [subgraph or fb.SubGraphMetadataT()]
        m.associatedFiles = files
        return m

    def file_of(kind, version=None):
        f = fb.AssociatedFileT()
        f.name, f.type, f.version = "f.txt", kind, version
        return f

    def unit(kind):
        u = fb.ProcessUnitT()
        u.optionsType = kind
        u.options = {fb.ProcessUnitOptions.NormalizationOptions: fb.NormalizationOptionsT,
                     fb.ProcessUnitOptions.RegexTokenizerOptions: fb.RegexTokenizerOptionsT,
                     fb.ProcessUnitOptions.BertTokenizerOptions: fb.BertTokenizerOptionsT}[kind]()
        return u

    cases = {"empty": model_with()}
    cases["labels"] = model_with(files=[file_of(fb.AssociatedFileType.TENSOR_AXIS_LABELS)])
    cases["vocabulary"] = model_with(files=[file_of(fb.AssociatedFileType.VOCABULARY)])
    cases["file version"] = model_with(files=[file_of(fb.AssociatedFileType.DESCRIPTIONS, "2")])
    sub = fb.SubGraphMetadataT()
    sub.inputProcessUnits = [unit(fb.ProcessUnitOptions.RegexTokenizerOptions)]
    cases["regex tokenizer"] = model_with(sub)
    sub = fb.SubGraphMetadataT()
    sub.inputTensorMetadata = [tensor(processUnits=[unit(fb.ProcessUnitOptions.BertTokenizerOptions)])]
    cases["bert in a tensor"] = model_with(sub)
    sub = fb.SubGraphMetadataT()
    sub.outputTensorGroups = [fb.TensorGroupT()]
    cases["tensor groups"] = model_with(sub)
    sub = fb.SubGraphMetadataT()
    content = fb.ContentT()
    content.contentPropertiesType = fb.ContentProperties.AudioProperties
    content.contentProperties = fb.AudioPropertiesT()
    sub.inputTensorMetadata = [tensor(content=content)]
    cases["audio"] = model_with(sub)
    return {name: finish(m) for name, m in cases.items()}


def test_parser_version_stand_in_matches_the_compiled_one():
    native = _native_version_checker()
    for name, buffer in _metadata_buffers().items():
        assert metadata.parser_version(buffer) == native(buffer), name


def test_parser_version_follows_the_schema_history():
    versions = {name: metadata.parser_version(b) for name, b in _metadata_buffers().items()}
    assert versions == {"empty": "1.0.0", "labels": "1.0.0", "vocabulary": "1.0.1",
                        "file version": "1.4.1", "regex tokenizer": "1.2.1",
                        "bert in a tensor": "1.1.0", "tensor groups": "1.2.0", "audio": "1.3.0"}
    with pytest.raises(ValueError, match="not a valid"):
        metadata.parser_version(b"\x00" * 16)


@pytest.mark.xfail(strict=True, reason="mediapipe 1.2.x wheels lack the module; when this passes, "
                   "upstream ships it again: delete pipeline.metadata's stand-in")
def test_mediapipe_ships_its_native_metadata_version_module():
    import subprocess
    import sys

    # In a fresh interpreter: this session has the stand-in registered under that name.
    probe = ("import importlib.util; importlib.util.find_spec("
             f"{metadata.MISSING_NATIVE_MODULE!r}).loader.load_module")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def test_tflite_supports_displayer_reads_it_back(labelled_model, task_library, tmp_path):
    """The other maintained reader: tflite-support's MetadataDisplayer, in the Task Library's own
    environment (its protobuf 3 modules do not import beside TensorFlow's)."""
    import json
    import subprocess

    python = task_library.env_python()
    model = tmp_path / "model.tflite"
    model.write_bytes(labelled_model)
    probe = ("import json, sys; from tflite_support import metadata; "
             "d = metadata.MetadataDisplayer.with_model_file(sys.argv[1]); "
             "print(json.dumps([json.loads(d.get_metadata_json()), d.get_packed_associated_file_list()]))")
    done = subprocess.run([python, "-c", probe, str(model)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found, packed = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["name"] == "MobileNetV2 test" and found["author"] == "the team"
    assert packed == ["labels.txt"]
