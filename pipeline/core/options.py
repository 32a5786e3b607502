"""Settings as data: each stage declares its options here once, and both front doors read them.

An `Option` is one setting as a user names it: its command-line name (`calibration-samples`), kind,
default and help. The command layer (pipeline.commands.cli) turns options into absl flags; the
Python API (pipeline.api) turns keyword arguments into the same values (`calibration_samples=100`
is `--calibration-samples 100`). Below both, stages read a `Settings`: the values by option name and
which of them were given, never absl's flags.
"""

import dataclasses
import difflib
import os
from collections.abc import Mapping

from pipeline.core.errors import PipelineInputError

KINDS = ("string", "integer", "float", "bool", "enum", "list", "multi_string")


@dataclasses.dataclass(frozen=True)
class Option:
    kind: str
    name: str
    default: object
    help: str
    choices: tuple = None  # the values an "enum" takes

    @property
    def keyword(self):
        """The name as a Python keyword argument: `calibration_samples`."""
        return self.name.replace("-", "_")

    def check(self, value):
        """`value` given from Python, as the command line would have it; PipelineInputError if it
        is not of this option's kind."""
        if value is None:
            return None
        kind = self.kind
        if kind == "string" and isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "enum" and value in self.choices:
            return value
        if kind in ("list", "multi_string"):
            if isinstance(value, (str, os.PathLike)):
                value = [os.fspath(value)] if kind == "multi_string" else \
                    [v.strip() for v in os.fspath(value).split(",") if v.strip()]
            if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
                return [os.fspath(v) for v in value]
        expected = {"enum": f"one of {', '.join(map(str, self.choices or ()))}",
                    "list": "a list of strings (or one comma-separated string)",
                    "multi_string": "a list of strings"}.get(kind, f"a {kind}")
        raise PipelineInputError(f"{self.keyword}={value!r} is not {expected}")

    def parse(self, text):
        """The value of `text` as typed on a command line (a sweep cell's), PipelineInputError when
        it does not parse."""
        kind = self.kind
        try:
            if kind == "integer":
                return int(text)
            if kind == "float":
                return float(text)
            if kind == "bool":
                lowered = text.lower()
                if lowered not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                return lowered in ("true", "1")
            if kind == "list":
                return [v.strip() for v in text.split(",") if v.strip()]
            if kind == "multi_string":
                return [text]
        except ValueError:
            raise PipelineInputError(f"--{self.name} {text!r} is not a {kind}") from None
        if kind == "enum" and text not in self.choices:
            raise PipelineInputError(f"--{self.name} {text!r} is not one of {', '.join(self.choices)}")
        return text


def option(kind, name, default, help, choices=None):
    """An Option; `choices` for an "enum"."""
    if kind not in KINDS:
        raise ValueError(f"option kind {kind!r} is not one of {KINDS}")
    return Option(kind, name, default, help, tuple(choices) if choices else None)


def merge(*groups):
    """The options of several stages as one tuple, each name once (the first declaration wins:
    export shares --seed, --threads, --resolution … between stages)."""
    found = {}
    for group in groups:
        for item in group:
            found.setdefault(item.name, item)
    return tuple(found.values())


class Settings(Mapping):
    """The values of a set of options by name (`settings["calibration-samples"]`), and which were
    given rather than left at their default (`settings.given("calibration")`)."""

    def __init__(self, options, values=None, given=()):
        self.options = {o.name: o for o in options}
        self._values = {name: o.default for name, o in self.options.items()}
        unknown = set(values or {}) - set(self.options)
        if unknown:
            raise KeyError(f"not options of these settings: {sorted(unknown)}")
        self._values.update(values or {})
        self._given = frozenset(given)

    @classmethod
    def from_keywords(cls, options, what, **keywords):
        """Settings from Python keyword arguments named like the options (dashes as underscores);
        an unknown keyword or a value of the wrong kind is one PipelineInputError."""
        by_keyword = {o.keyword: o for o in options}
        values = {}
        for keyword, value in keywords.items():
            found = by_keyword.get(keyword)
            if found is None:
                close = difflib.get_close_matches(keyword, by_keyword, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise PipelineInputError(f"{what} has no setting {keyword!r}{hint}")
            values[found.name] = found.check(value)
        return cls(options, values, given=values)

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def given(self, name):
        return name in self._given

    def replace(self, **by_name):
        """These settings with some values replaced (by option name, dashes as underscores), those
        counting as given."""
        values = dict(self._values)
        named = {key.replace("_", "-"): value for key, value in by_name.items()}
        values.update(named)
        return Settings(self.options.values(), values, self._given | set(named))

    def command_line(self, program):
        """`program` with the given settings as flags: the command that reproduces these settings
        (`python -m pipeline.export --quantize int8 …`)."""
        import shlex

        words = program.split()
        for name, value in self.explicit().items():
            kind = self.options[name].kind
            if kind == "bool":
                words.append(f"--{name}" if value else f"--no{name}")
            elif kind == "multi_string":
                for item in value:
                    words += [f"--{name}", str(item)]
            elif value is not None:
                words += [f"--{name}", ",".join(map(str, value)) if kind == "list" else str(value)]
        return shlex.join(words)

    def explicit(self):
        """{name: value} of the settings that were given."""
        return {name: self._values[name] for name in self.options if name in self._given}
