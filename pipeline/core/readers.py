"""Readers of the files a user hands the pipeline: labels, JSON configs, `.tflite` flatbuffers.

Each turns untrusted bytes into values or refuses them with one `PipelineInputError` that names the
file, says what is wrong and what to do; nothing else escapes them, whatever the bytes (the
property tests in tests/test_properties.py feed them arbitrary and damaged files).

A `.tflite` is a flatbuffer, and flatbuffers are read in place, without bounds checks: what native
code does with a damaged one is undefined. LiteRT verifies a model before it builds an interpreter,
but two readers the pipeline uses do not:

- MediaPipe's metadata reader turns the metadata flatbuffer into JSON with flatbuffers' `GenText`,
  which never verifies its input (a few flipped bytes in the metadata segfault the process);
- the Python flatbuffer API reads out-of-range offsets as garbage, wraps negative ones around the
  end of the buffer, and walks vectors of any length, so a damaged file gives nonsense or takes
  minutes instead of an error.

So `parse_model` parses a model with the schema's Python object API under a bound on its size and
checks what the interpreter will index (buffers, tensors, op codes), and `check_flatbuffer` verifies
a flatbuffer against its `.fbs` schema the way flatbuffers' C++ Verifier does (every offset, vtable,
string and vector inside the buffer), driven by the same schema file `GenText` is given.
"""

import json
import math
import re
import struct
import unicodedata

from pipeline.core.errors import PipelineInputError

UTF8_BOM = "\ufeff"

TFLITE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer
# A flatbuffer's tables, strings and vectors take at least 4 bytes each, so a file of n bytes holds
# at most n / 4 of them; a parse that claims more is reading the same bytes again and again.
BYTES_PER_ELEMENT = 4
# No activation of an image classifier comes near this; a shape that does is damage, and the
# interpreter would try to allocate it.
MAX_TENSOR_BYTES = 1 << 32
_ELEMENT_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1,
                  "INT16": 2, "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16,
                  "UINT64": 8, "UINT32": 4, "UINT16": 2, "BFLOAT16": 2}
# Sub-byte types: constant data is packed by newer converters and one a byte by older ones, so only
# the packed size bounds the tensor.
_PACKED_BITS = {"INT4": 4, "UINT4": 4, "INT2": 2}
# What the Python flatbuffer API raises on a damaged buffer: out-of-range reads (struct.error,
# IndexError, numpy's ValueError), a missing vector iterated (TypeError), a bad union member.
_PARSE_ERRORS = (struct.error, IndexError, ValueError, TypeError, KeyError, AttributeError,
                 OverflowError, RecursionError, UnicodeDecodeError)


# --- labels.txt --------------------------------------------------------------------------------


def read_input_file(path, missing, folder, unreadable):
    """The bytes of an input file, or one PipelineInputError: `missing`, `folder` and `unreadable`
    are the lines for a path that does not exist, is a folder, or cannot be read (`{path}` and, for
    `unreadable`, `{reason}` filled in)."""
    from pathlib import Path

    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PipelineInputError(missing.format(path=path)) from None
    except IsADirectoryError:
        raise PipelineInputError(folder.format(path=path)) from None
    except OSError as error:
        raise PipelineInputError(unreadable.format(path=path, reason=error.strerror or error)) from None


def _odd_character(label):
    """The first character of `label` another labels reader would split or hide: line and paragraph
    separators (Python's splitlines breaks at them, Java's readLine at a lone CR) and control
    characters other than a tab."""
    for character in label:
        if character != "\t" and unicodedata.category(character) in ("Cc", "Zl", "Zp"):
            return character
    return None


def parse_labels(data, where, expected=None):
    """The labels in the bytes (or text) of a labels file: one label a line, in output order.

    A UTF-8 byte-order mark, CRLF line ends, spaces around a label and blank lines at the end are
    fine. A blank line between labels, a repeated label, a control character, bytes that are not
    UTF-8 and (with `expected`) another count than the model's outputs are refused, naming the line:
    each shifts every label after it onto the wrong class without an error anywhere else.
    """
    if isinstance(data, str):
        text = data
    else:
        data = bytes(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[:error.start].count(b"\n") + 1
            raise PipelineInputError(f"{where}, line {line}: not UTF-8 text (byte {error.start}: "
                                     f"{error.reason}): save the labels as UTF-8") from None
    lines = text.removeprefix(UTF8_BOM).split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    labels, first_seen = [], {}
    for number, line in enumerate(lines, 1):
        label = line.strip()  # also the CR of a CRLF line end
        if not label:
            raise PipelineInputError(f"{where}, line {number}: blank line between labels: remove it "
                                     "(one label a line, in output order)")
        odd = _odd_character(label)
        if odd is not None:
            raise PipelineInputError(f"{where}, line {number}: label {label!r} contains "
                                     f"U+{ord(odd):04X} ({unicodedata.name(odd, 'a control character')}): "
                                     "labels are plain text, one a line")
        if label in first_seen:
            raise PipelineInputError(f"{where}, line {number}: label {label!r} repeats line "
                                     f"{first_seen[label]}: labels must be unique")
        first_seen[label] = number
        labels.append(label)
    if expected is not None and len(labels) != expected:
        last = f" (the last on line {len(lines)})" if labels else ""
        raise PipelineInputError(f"{where} has {len(labels)} labels but the model has {expected} "
                                 f"outputs{last}: give one label a line, in output order")
    if not labels:
        raise PipelineInputError(f"{where} holds no labels: give one label a line, in output order")
    return labels


# --- JSON ------------------------------------------------------------------------------------


def _not_json(literal):
    # Python's json takes NaN and Infinity, which are not JSON and compare false with every bound.
    raise ValueError(f"{literal} is not a JSON number")


def _finite(text):
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise ValueError(f"{text} is out of a float's range")
    return value


def parse_json(data, where, fix):
    """The JSON value in the bytes (or text) of a file: strict JSON (no NaN / Infinity, no number
    beyond a float's range), a UTF-8 byte-order mark allowed; anything else is refused with `fix`."""
    if not isinstance(data, str):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            raise PipelineInputError(f"{where} is not UTF-8 text (byte {error.start}: "
                                     f"{error.reason}): {fix}") from None
    try:
        return json.loads(data.removeprefix(UTF8_BOM), parse_constant=_not_json, parse_float=_finite)
    except ValueError as error:
        raise PipelineInputError(f"{where} is not valid JSON ({error}): {fix}") from None
    except RecursionError:
        raise PipelineInputError(f"{where} nests too deeply to be a config: {fix}") from None


# --- .tflite -------------------------------------------------------------------------------


def _refuse(where, reason):
    return PipelineInputError(f"{where} does not load as a TFLite model ({reason}): pass a .tflite "
                              "written by the converter (python -m pipeline.export)")


def _check_size(root, data, where):
    """Bounds what the object API will build by what the bytes can hold, from the vector lengths
    alone (a damaged length makes the full parse loop for minutes), and checks that the data of
    buffers stored behind the flatbuffer (models over 2 GB) lies inside the file."""
    limit = len(data) // BYTES_PER_ELEMENT
    count = (root.SubgraphsLength() + root.BuffersLength() + root.OperatorCodesLength()
             + root.MetadataLength() + root.SignatureDefsLength() + root.MetadataBufferLength())
    if count <= limit:  # only then are the subgraphs few enough to walk
        for i in range(root.SubgraphsLength()):
            graph = root.Subgraphs(i)
            count += (graph.TensorsLength() + graph.OperatorsLength() + graph.InputsLength()
                      + graph.OutputsLength())
    if count > limit:
        raise _refuse(where, f"it claims {count:,} tables and entries in {len(data):,} bytes")
    for i in range(root.BuffersLength()):
        buffer = root.Buffers(i)
        if buffer.Offset() > 1 and buffer.Offset() + buffer.Size() > len(data):
            raise _refuse(where, f"buffer {i} lies at bytes {buffer.Offset()}.."
                                 f"{buffer.Offset() + buffer.Size()} of a {len(data):,}-byte file")


def parse_model(data, where="the model"):
    """The schema's object (`ModelT`) of a `.tflite`'s bytes, checked so that every index the
    interpreter and `pipeline.convert` follow points inside the model."""
    # LiteRT's copies of the schema and flatbuffer tools: the same schema as TensorFlow's, without
    # importing TensorFlow (~5 CPU-s), so commands that only read a model start in a fraction.
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    data = bytes(data)
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise PipelineInputError(f"{where} is not a TFLite model (no TFL3 identifier at bytes 4-8): "
                                 "pass a .tflite file written by the converter")
    try:
        root = schema.Model.GetRootAs(data, 0)
        # Checked before LiteRT sees the model: ai-edge-litert 2.3 segfaults building an
        # interpreter for a (verified) model whose subgraphs field is absent.
        for field, absent in (("subgraphs", root.SubgraphsIsNone()), ("buffers", root.BuffersIsNone())):
            if absent or not getattr(root, field.capitalize() + "Length")():
                raise _refuse(where, f"it has no {field}")
        _check_size(root, data, where)
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    except _PARSE_ERRORS as error:
        raise _refuse(where, f"the flatbuffer does not parse: {type(error).__name__}: "
                             f"{' '.join(str(error).split())[:120]}") from None
    _check_indices(model, where, schema)
    return model


def _check_indices(model, where, schema):
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    buffers = model.buffers
    codes = model.operatorCodes or []
    for g, graph in enumerate(model.subgraphs):
        tensors = graph.tensors or []
        for t, tensor in enumerate(tensors):
            name = f"tensor {t} of subgraph {g}"
            try:
                # LiteRT hands tensor names to Python as str: one that is not UTF-8 raises
                # UnicodeDecodeError from get_input_details() / get_output_details().
                bytes(tensor.name or b"").decode("utf-8")
            except UnicodeDecodeError:
                raise _refuse(where, f"{name} has a name that is not UTF-8 text") from None
            if tensor.type not in type_names:
                raise _refuse(where, f"{name} has unknown type {tensor.type}")
            if not 0 <= tensor.buffer < len(buffers):
                raise _refuse(where, f"{name} refers to buffer {tensor.buffer} of {len(buffers)}")
            shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
            if any(d < 0 for d in shape):
                raise _refuse(where, f"{name} has shape {shape}")
            if tensor.shapeSignature is not None and any(int(d) < -1 for d in tensor.shapeSignature):
                raise _refuse(where, f"{name} has shape signature {list(tensor.shapeSignature)}")
            elements = 1
            for d in shape:
                elements *= d
            kind = type_names[tensor.type]
            if kind in _ELEMENT_BYTES:
                size = elements * _ELEMENT_BYTES[kind]
            elif kind in _PACKED_BITS:
                size = (elements * _PACKED_BITS[kind] + 7) // 8
            else:
                size = None  # strings, resources, variants: sized by their contents
            if size is not None and size > MAX_TENSOR_BYTES:
                raise _refuse(where, f"{name} of shape {shape} would take {size:,} bytes")
            constant = buffers[tensor.buffer].data
            if (kind in _ELEMENT_BYTES and constant is not None and len(constant)
                    and tensor.sparsity is None and len(constant) != size):
                raise _refuse(where, f"{name} ({kind} {shape}) holds {len(constant):,} bytes of "
                                     f"data instead of {size:,}")
        for io, indices in (("input", graph.inputs), ("output", graph.outputs)):
            for index in indices if indices is not None else []:
                if not 0 <= index < len(tensors):
                    raise _refuse(where, f"subgraph {g}'s {io} is tensor {index} of {len(tensors)}")
        for o, op in enumerate(graph.operators or []):
            if not 0 <= op.opcodeIndex < len(codes):
                raise _refuse(where, f"op {o} of subgraph {g} has op code {op.opcodeIndex} of "
                                     f"{len(codes)}")
            for role in ("inputs", "outputs", "intermediates"):
                for index in getattr(op, role) if getattr(op, role) is not None else []:
                    # -1 is TFLite's "optional tensor left out".
                    if not -1 <= index < len(tensors):
                        raise _refuse(where, f"op {o} of subgraph {g} names {role[:-1]} tensor "
                                             f"{index} of {len(tensors)}")


# --- flatbuffers verified against their .fbs schema --------------------------------------------

_SCALAR_BYTES = {"bool": 1, "byte": 1, "ubyte": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2,
                 "int16": 2, "uint16": 2, "int": 4, "uint": 4, "float": 4, "int32": 4, "uint32": 4,
                 "float32": 4, "long": 8, "ulong": 8, "double": 8, "int64": 8, "uint64": 8,
                 "float64": 8}
_MAX_DEPTH = 64  # flatbuffers' Verifier default
_MAX_TABLES = 100_000  # tables visited as GenText will walk them (shared subtables count each time)


class Schema:
    """The tables, enums and unions of an `.fbs` file (the subset metadata schemas use: tables,
    enums, unions and scalars; no structs), and its root type and file identifier."""

    def __init__(self, text):
        text = re.sub(r"//[^\n]*", "", text)
        self.enums, self.unions, self.tables = {}, {}, {}
        self.root = self.identifier = None
        for match in re.finditer(r"\b(table|struct|enum|union)\s+(\w+)\s*(?::\s*(\w+))?\s*\{(.*?)\}"
                                 r"|\broot_type\s+(\w+)\s*;|\bfile_identifier\s+\"(.{4})\"\s*;",
                                 text, re.S):
            kind, name, base, body, root, identifier = match.groups()
            if root:
                self.root = root
            elif identifier:
                self.identifier = identifier.encode("ascii")
            elif kind == "struct":
                raise NotImplementedError(f"struct {name}: the schema reader handles no structs")
            elif kind == "enum":
                self.enums[name] = base
            elif kind == "union":
                members = [m.split(":")[-1].strip() for m in body.split(",") if m.strip()]
                self.unions[name] = {i + 1: member for i, member in enumerate(members)}
            else:
                fields = []
                for field in body.split(";"):
                    field = re.sub(r"\(.*?\)", "", field).split("=")[0].strip()
                    if field:
                        field_name, field_type = (part.strip() for part in field.split(":"))
                        fields.append((field_name, field_type))
                self.tables[name] = fields
        if self.root not in self.tables:
            raise ValueError(f"the schema's root_type {self.root} is not one of its tables")


class _Verifier:
    def __init__(self, schema, buffer, where):
        self.schema, self.buffer, self.where, self.tables = schema, buffer, where, 0

    def fail(self, reason):
        raise PipelineInputError(f"{self.where} is damaged ({reason}): re-export the model")

    def read(self, fmt, position):
        size = struct.calcsize(fmt)
        if position < 0 or position + size > len(self.buffer):
            self.fail(f"a read of {size} bytes at {position} is outside its {len(self.buffer)} bytes")
        return struct.unpack_from(fmt, self.buffer, position)[0]

    def target(self, position):
        """Where the uoffset at `position` points; 0 and overflowing offsets are invalid."""
        offset = self.read("<I", position)
        if offset == 0 or offset >= 1 << 31:
            self.fail(f"offset {offset} at byte {position}")
        return position + offset

    def vector(self, position, element_bytes):
        start = self.target(position)
        length = self.read("<I", start)
        if start + 4 + length * element_bytes > len(self.buffer):
            self.fail(f"a vector of {length:,} entries at byte {start} runs past the end")
        return start + 4, length

    def string(self, position):
        start, length = self.vector(position, 1)
        if self.read("<B", start + length) != 0:  # flatbuffers strings end in NUL
            self.fail(f"the string at byte {start} is not terminated")
        try:
            bytes(self.buffer[start:start + length]).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"the string at byte {start} is not UTF-8")

    def table(self, name, position, depth):
        self.tables += 1
        if depth > _MAX_DEPTH or self.tables > _MAX_TABLES:
            self.fail("tables nest deeper or repeat more often than any real metadata")
        vtable = position - self.read("<i", position)
        vtable_size, table_size = self.read("<H", vtable), self.read("<H", vtable + 2)
        if vtable_size < 4 or vtable_size % 2 or vtable + vtable_size > len(self.buffer):
            self.fail(f"the vtable at byte {vtable} is {vtable_size} bytes")
        if position + table_size > len(self.buffer):
            self.fail(f"the {name} at byte {position} runs past the end")
        slot = 0
        for field_name, field_type in self.schema.tables[name]:
            union = field_type in self.schema.unions
            # A union takes two slots: its member type (a ubyte), then the member.
            slots = [slot, slot + 1] if union else [slot]
            slot += len(slots)
            offsets = []
            for s in slots:
                entry = 4 + 2 * s
                offsets.append(self.read("<H", vtable + entry) if entry < vtable_size else 0)
            if offsets[-1] == 0:
                continue
            if any(o and o >= table_size for o in offsets):
                self.fail(f"field {field_name} of the {name} at byte {position} is outside it")
            field = position + offsets[-1]
            if union:
                member_type = self.read("<B", position + offsets[0]) if offsets[0] else 0
                member = self.schema.unions[field_type].get(member_type)
                if member_type and member is None:
                    self.fail(f"{field_name} has unknown union type {member_type}")
                if member:
                    self.table(member, self.target(field), depth + 1)
            else:
                self.value(field_type, field, depth)

    def value(self, field_type, field, depth):
        vector = field_type.startswith("[")
        element = field_type.strip("[]").strip()
        if element in self.schema.enums:
            element = self.schema.enums[element]
        if element in _SCALAR_BYTES:
            if vector:
                self.vector(field, _SCALAR_BYTES[element])
            else:
                self.read("<" + {1: "B", 2: "H", 4: "I", 8: "Q"}[_SCALAR_BYTES[element]], field)
        elif element == "string":
            if vector:
                start, length = self.vector(field, 4)
                for i in range(length):
                    self.string(start + 4 * i)
            else:
                self.string(field)
        elif element in self.schema.tables:
            if vector:
                start, length = self.vector(field, 4)
                for i in range(length):
                    self.table(element, self.target(start + 4 * i), depth + 1)
            else:
                self.table(element, self.target(field), depth + 1)
        else:
            raise NotImplementedError(f"field type {field_type} is not handled by the schema reader")


def check_flatbuffer(schema, buffer, where):
    """Raises PipelineInputError unless `buffer` is a well-formed `schema.root` flatbuffer: every
    read a schema-driven reader (GenText) makes stays inside it, every string is UTF-8."""
    buffer = bytes(buffer)
    if len(buffer) < 8 or (schema.identifier and buffer[4:8] != schema.identifier):
        raise PipelineInputError(f"{where} is damaged (no {schema.identifier!r} identifier): "
                                 "re-export the model")
    verifier = _Verifier(schema, buffer, where)
    verifier.table(schema.root, verifier.target(0), 0)
