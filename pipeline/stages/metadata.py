"""TFLite Metadata: what lets MediaPipe Tasks, the Task Library and Android Studio use the model alone.

The exported `.tflite` carries, inside the file, its name, version, description, author and
licence; the input's image properties (RGB) and the NormalizationOptions that turn pixels into what
the model was calibrated on (x = (p − mean) / std); the output's meaning and its labels, packed
as an associated file (TENSOR_AXIS_LABELS), so class names travel with the model.

Written with MediaPipe's metadata writers (`mediapipe.tasks.python.metadata.metadata_writers`), the
maintained successor of tflite-support's. Two things are done around them, both small:

- Current mediapipe wheels (1.2.x) lack the native module the writer imports to stamp the minimum
  parser version (`mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`). When it is
  absent, `parser_version` stands in for it: a port of upstream's `metadata_version.cc` (the
  version each schema member was added in; the highest present wins). A test checks it against the
  compiled tflite-support module where that installs, and a strict xfail tells us once mediapipe
  ships the module again.
- The writer zips the labels with the wall-clock time in each entry; `_fixed_zip_times` rewrites
  the entries with a fixed time so the same inputs give a byte-identical `.tflite`.

    python -m pipeline.inspect MODEL.tflite     # prints what is written here
"""

import dataclasses
import functools
import importlib.util
import io
import json
import lzma
import struct
import sys
import types
import zipfile
import zlib

from pipeline.core.options import option
from pipeline.core.errors import PipelineInputError

MISSING_NATIVE_MODULE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
# Schema members added after metadata 1.0.0, with the version that added each (upstream
# mediapipe/tasks/cc/metadata/metadata_version.cc).
_VOCABULARY, _SCANN_INDEX = "VOCABULARY", "SCANN_INDEX_FILE"
_MEMBER_VERSIONS = {
    "associated_file_vocabulary": (1, 0, 1),
    "process_units": (1, 1, 0),
    "bert_tokenizer": (1, 1, 0),
    "sentence_piece_tokenizer": (1, 1, 0),
    "tensor_groups": (1, 2, 0),
    "regex_tokenizer": (1, 2, 1),
    "audio_properties": (1, 3, 0),
    "associated_file_scann_index": (1, 4, 0),
    "associated_file_version": (1, 4, 1),
    "custom_metadata": (1, 5, 0),
}
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The general metadata: `--model-name`, `--model-version`, `--model-description`, … flags."""
    name: str
    description: str
    version: str = "1"
    author: str = ""
    license: str = ""


def parser_version(metadata_buffer):
    """The lowest metadata parser version that understands every field in `metadata_buffer`."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    buffer = bytes(metadata_buffer)
    if not fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0):
        raise ValueError("The model metadata is not a valid FlatBuffer buffer.")
    root = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    file_types = {v: k for k, v in vars(fb.AssociatedFileType).items() if not k.startswith("_")}
    option_types = {v: k for k, v in vars(fb.ProcessUnitOptions).items() if not k.startswith("_")}
    found = [(1, 0, 0)]

    def files(items):
        for item in items or ():
            kind = file_types.get(item.type)
            if kind == _VOCABULARY:
                found.append(_MEMBER_VERSIONS["associated_file_vocabulary"])
            if kind == _SCANN_INDEX:
                found.append(_MEMBER_VERSIONS["associated_file_scann_index"])
            if item.version is not None:
                found.append(_MEMBER_VERSIONS["associated_file_version"])

    def units(items):
        for item in items or ():
            kind = option_types.get(item.optionsType)
            member = {"BertTokenizerOptions": "bert_tokenizer",
                      "SentencePieceTokenizerOptions": "sentence_piece_tokenizer",
                      "RegexTokenizerOptions": "regex_tokenizer"}.get(kind)
            if member:
                found.append(_MEMBER_VERSIONS[member])

    def tensors(items):
        for tensor in items or ():
            files(tensor.associatedFiles)
            units(tensor.processUnits)
            content = tensor.content
            if content is not None and content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                found.append(_MEMBER_VERSIONS["audio_properties"])

    for subgraph in root.subgraphMetadata or ():
        tensors(subgraph.inputTensorMetadata)
        tensors(subgraph.outputTensorMetadata)
        files(subgraph.associatedFiles)
        for process_units in (subgraph.inputProcessUnits, subgraph.outputProcessUnits):
            if process_units is not None:
                found.append(_MEMBER_VERSIONS["process_units"])
                units(process_units)
        if subgraph.inputTensorGroups is not None or subgraph.outputTensorGroups is not None:
            found.append(_MEMBER_VERSIONS["tensor_groups"])
        if subgraph.customMetadata is not None:
            found.append(_MEMBER_VERSIONS["custom_metadata"])
    files(root.associatedFiles)
    return ".".join(str(n) for n in max(found))


def _ensure_parser_version_module():
    """Registers `parser_version` under the native module's name when the wheel lacks it."""
    if MISSING_NATIVE_MODULE in sys.modules:
        return False
    try:
        if importlib.util.find_spec(MISSING_NATIVE_MODULE) is not None:
            return False
    except ModuleNotFoundError:  # a parent package is missing too, as in mediapipe 1.2.x
        pass
    parts = MISSING_NATIVE_MODULE.split(".")
    for depth in range(3, len(parts)):
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except ImportError:
                package = types.ModuleType(name)
                package.__path__ = []
                sys.modules[name] = package
    module = types.ModuleType(MISSING_NATIVE_MODULE)
    module.GetMinimumMetadataParserVersion = parser_version
    module.__doc__ = "pipeline.metadata.parser_version standing in for the missing native module"
    sys.modules[MISSING_NATIVE_MODULE] = module
    setattr(sys.modules[".".join(parts[:-1])], parts[-1], module)
    return True


def _fixed_zip_times(model_with_files):
    """The same model with every packed file's zip time fixed (the writer stamps the clock)."""
    with zipfile.ZipFile(io.BytesIO(model_with_files)) as packed:
        entries = [(info, packed.read(info)) for info in packed.infolist()]
        start = min(info.header_offset for info, _ in entries)
    # Offsets in the zip count from the start of the whole file, so the flatbuffer before the
    # first entry is kept as it is and the entries are written again behind it.
    prefix = io.BytesIO(model_with_files[:start])
    prefix.seek(0, io.SEEK_END)
    with zipfile.ZipFile(prefix, "a") as rewritten:
        for info, data in entries:
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            rewritten.writestr(fixed, data)
    return prefix.getvalue()


def write_image_classifier_metadata(model_bytes, info, labels, norm_mean, norm_std,
                                    input_description, output_description):
    """`model_bytes` with image-classifier metadata and `labels` packed inside."""
    _ensure_parser_version_module()
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer

    writer = metadata_writer.MetadataWriter(bytearray(model_bytes))
    # add_general_info takes only a name and a description; the schema also has version, author
    # and licence, and the writer packs whatever GeneralMd it holds.
    writer._general_md = metadata_info.GeneralMd(  # noqa: SLF001
        name=info.name, version=info.version, description=info.description,
        author=info.author or None, licenses=info.license or None)
    writer.add_image_input(list(norm_mean), list(norm_std),
                           color_space_type=metadata_writer.metadata_fb.ColorSpaceType.RGB,
                           description=input_description)
    writer.add_classification_output(metadata_writer.Labels().add(list(labels)),
                                     description=output_description)
    model_with_metadata, _ = writer.populate()
    del writer  # its __del__ removes a temporary folder; at interpreter exit it would fail noisily
    return _fixed_zip_times(bytes(model_with_metadata))


METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry MediaPipe and the Task Library read
# Packed files are labels and vocabularies (kilobytes); a zip entry that inflates past this is not
# one (a zip bomb would otherwise be inflated in memory whole).
MAX_PACKED_FILE_BYTES = 64 << 20
# What zipfile raises on a damaged archive besides BadZipFile: inflate errors (zlib.error), a
# compression method it lacks (NotImplementedError), an encrypted entry (RuntimeError), reads past
# the end (EOFError, OSError, struct.error), a name in no encoding (UnicodeDecodeError).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError,
               RuntimeError, EOFError, OSError, ValueError, struct.error, OverflowError,
               UnicodeDecodeError, lzma.LZMAError)


@functools.lru_cache(maxsize=1)
def _metadata_schema(path):
    from pipeline.core.readers import Schema

    with open(path, encoding="utf-8") as schema:
        return Schema(schema.read())


def _packed_files(model_bytes, where):
    """{name: bytes} of the zip the metadata writer appends to the model (MediaPipe reads the same)."""
    try:
        packed = zipfile.ZipFile(io.BytesIO(model_bytes))
    except zipfile.BadZipFile:
        return {}  # no zip behind the flatbuffer: nothing packed
    except _ZIP_ERRORS as error:
        raise PipelineInputError(f"the files packed in {where} are damaged ({error}): re-export "
                                 "the model") from None
    files = {}
    with packed:
        for info in packed.infolist():
            if info.file_size > MAX_PACKED_FILE_BYTES:
                raise PipelineInputError(f"{where} packs {info.filename!r} of {info.file_size:,} "
                                         "bytes, more than any labels file: re-export the model")
            try:
                files[info.filename] = packed.read(info)
            except _ZIP_ERRORS as error:
                raise PipelineInputError(f"{info.filename!r} packed in {where} is damaged ({error}): "
                                         "re-export the model") from None
    return files


def read_metadata(model_bytes, where="the model"):
    """(metadata dict or None, {packed file name: bytes}) of a `.tflite`.

    The model and its metadata flatbuffer are verified first (pipeline.readers): MediaPipe's reader
    hands the metadata to flatbuffers' GenText, which reads damaged offsets wherever they point and
    can take the process down. Damage is a PipelineInputError naming `where`."""
    from pipeline.core.readers import check_flatbuffer, parse_model

    model = parse_model(model_bytes, where)
    buffers = model.buffers or []
    metadata_buffer = None
    for entry in model.metadata or []:
        # As MediaPipe's get_metadata_buffer: the first entry so named that holds any bytes.
        if entry.name is None or bytes(entry.name) != METADATA_NAME.encode():
            continue
        if not 0 <= entry.buffer < len(buffers):
            raise PipelineInputError(f"{where}: its metadata entry points at buffer {entry.buffer} of "
                                     f"{len(buffers)}: re-export the model")
        data = buffers[entry.buffer].data
        if data is not None and len(data):
            metadata_buffer = bytes(data)
            break
    if metadata_buffer is None:
        return None, {}
    _ensure_parser_version_module()
    from mediapipe.tasks.python.metadata import metadata

    md_where = f"the metadata in {where}"
    check_flatbuffer(_metadata_schema(metadata._FLATC_TFLITE_METADATA_SCHEMA_FILE),  # noqa: SLF001
                     metadata_buffer, md_where)
    try:
        found = json.loads(metadata.convert_to_json(metadata_buffer))
    except (ValueError, RuntimeError) as error:  # GenText's own refusals; "nan" is not JSON
        raise PipelineInputError(f"{md_where} does not convert to JSON "
                                 f"({' '.join(str(error).split())[:160]}): re-export the model") from None
    return found, _packed_files(model_bytes, where)


def _subgraph(found):
    return ((found or {}).get("subgraph_metadata") or [{}])[0]


def normalization_options(found):
    """The input's NormalizationOptions ({"mean": [...], "std": [...]}) in a read_metadata dict,
    or None."""
    for tensor in _subgraph(found).get("input_tensor_metadata") or []:
        for unit in tensor.get("process_units") or []:
            if unit.get("options_type") == "NormalizationOptions":
                return unit.get("options") or {}
    return None


def has_label_file(found):
    """Whether the output carries its labels (TENSOR_AXIS_LABELS) in a read_metadata dict."""
    return any(item.get("type") == "TENSOR_AXIS_LABELS"
               for tensor in _subgraph(found).get("output_tensor_metadata") or []
               for item in tensor.get("associated_files") or [])


def output_descriptions(found):
    return [tensor.get("description") for tensor in _subgraph(found).get("output_tensor_metadata") or []]


def describe_output(built, converted):
    """What the scores mean, in the words the metadata and config carry."""
    if converted.output.dtype == "float32" and converted.config.head == "probabilities" \
            and built.output_kind == "logits":
        return (f"Probabilities of the {built.num_classes} classes (a float32 softmax inside the "
                "model), in the order of the packed labels.txt; they sum to 1.")
    if built.output_kind == "logits":
        return (f"Logits of the {built.num_classes} classes, in the order of the packed labels.txt: "
                "apply softmax for probabilities.")
    return f"Scores of the {built.num_classes} classes, in the order of the packed labels.txt."


def attach(converted, built, spec, info):
    """The ConvertedModel with its metadata written in (the graph is unchanged)."""
    import dataclasses

    side = spec.resolution
    input_description = (
        f"RGB image, {side}×{side}: the centered square of {spec.crop_fraction:g} × the shorter side, "
        f"resized bilinearly. x = (pixel − {spec.mean:g}) / {spec.std:g}"
        + ("; the uint8 input is the pixel byte itself." if converted.input.dtype == "uint8" else "."))
    model = write_image_classifier_metadata(
        converted.tflite, info, built.labels, [spec.mean], [spec.std], input_description,
        describe_output(built, converted))
    return dataclasses.replace(converted, tflite=model)


def info_from_settings(settings, built, convert_cfg):
    """ModelInfo from the --model-* settings, defaulting to what the export knows."""
    arch = built.architecture
    name = settings["model-name"] or built.name
    description = settings["model-description"] or (
        f"{arch.get('architecture', 'MobileNetV2')} {arch.get('alpha', '')}/{built.resolution} image "
        f"classifier, {built.num_classes} classes, {convert_cfg.quantize} "
        f"({'arXiv:1801.04381; ' if arch.get('architecture') == 'MobileNetV2' else ''}"
        f"weights: {built.weights_name or built.weights_source}, sha256 {built.weights_sha256[:12]}).")
    license_ = settings["model-license"]
    if license_ is None:
        # Keras' ImageNet MobileNetV2 weights are released under Apache-2.0; a user's own weights
        # carry whatever licence the user gives them.
        # (Judged from the weights' name, not a path: the folder they sit in must not change the
        # model's bytes.)
        license_ = "Apache-2.0" if built.synsets is not None and "imagenet" in str(
            built.weights_name or built.weights_source).lower() else ""
    for flag, value in (("model-name", name), ("model-version", settings["model-version"])):
        if not str(value).strip():
            raise PipelineInputError(f"--{flag} must not be empty")
    return ModelInfo(name=name, description=description, version=settings["model-version"],
                     author=settings["model-author"], license=license_)


OPTIONS = (
    option("string", "model-name", None,
           "Name in the model's metadata (default: e.g. mobilenet_v2_1.0_224)."),
    option("string", "model-version", "1", "Version in the model's metadata."),
    option("string", "model-description", None,
           "Description in the model's metadata (default: architecture, width, resolution, "
           "classes, quantization, weights)."),
    option("string", "model-author", "", "Author in the model's metadata."),
    option("string", "model-license", None,
           "Licence in the model's metadata (default: Apache-2.0 for the ImageNet weights, none "
           "for your own)."),
)
