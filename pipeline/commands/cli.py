"""What every command line shares: absl flags made from the stages' options, the settings read
back from them, quiet TensorFlow, and the rule that bad input ends in one line on stderr and exit
code 2, never a traceback. The only module that imports absl's flags: nothing below the commands
reads a flag. (TensorFlow's environment, oneDNN off and its logging quiet, is set by importing
`pipeline`.)"""

import errno
import signal
import sys
import warnings

from absl import app, flags, logging

from pipeline.core.errors import PipelineError
from pipeline.core.options import Settings, merge

FLAGS = flags.FLAGS


def define(kind, name, default, help, choices=None):
    """Defines flag `name` unless another option group already did (export takes every stage's)."""
    if name in FLAGS:
        return
    if kind == "enum":
        flags.DEFINE_enum(name, default, list(choices), help)
    else:
        getattr(flags, "DEFINE_" + kind)(name, default, help)
    # absl's --help lists the main module's key flags only; the stages' options are defined
    # through this helper, so each is declared a key flag of the command being run.
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def define_options(*groups):
    """absl flags for the options of `groups` (tuples of pipeline.core.options.Option)."""
    for item in merge(*groups):
        define(item.kind, item.name, item.default, item.help, item.choices)


def settings(*groups):
    """The parsed flags of `groups` as Settings: what the stages and the API read, no absl."""
    options = merge(*groups)
    return Settings(options, {o.name: FLAGS[o.name].value for o in options},
                    given={o.name for o in options if FLAGS[o.name].present})


def command_line():
    """The command as typed, for the report (`python -m pipeline.check …` exports too)."""
    import shlex
    from pathlib import Path

    module = Path(sys.argv[0]).stem if sys.argv and sys.argv[0].endswith(".py") else "export"
    return f"python -m pipeline.{module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])


_SIGNALLED = []


def _terminate_as_interrupt(signum, frame):
    # SIGTERM (a CI timeout, `kill`) and Ctrl-C unwind so that staged outputs are cleaned up and
    # previous artifacts stay untouched. Remembered, because an interrupt that lands inside
    # TensorFlow's function tracing can surface as another error (seen: TypeError from Keras' call
    # context) and must still read as an interruption.
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


class _QuietTensorFlowImport:
    """Imports TensorFlow with fd 2 silenced, whenever something first imports it.

    TensorFlow's native start-up (CUDA probing, absl C++ logging) writes to fd 2 regardless of
    TF_CPP_MIN_LOG_LEVEL. Importing it up front, silenced, cost every command ~5 CPU-seconds even
    when it ends on bad input at once or needs only LiteRT; this finder silences the import where
    it happens instead (Keras' import of it included)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            from pipeline.device.runner import quiet_native_stderr

            with quiet_native_stderr():
                load(module)

        spec.loader.exec_module = exec_module
        return spec


def _import_tensorflow_quietly():
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def _interrupted():
    print("interrupted: previous artifacts left as they were", file=sys.stderr)
    sys.exit(130)


def run(main, positional=False, flags_parser=None):
    """absl's app.run, with typed pipeline errors turned into one line and an exit code.

    `positional`: whether the command takes arguments besides its flags (files); a stray one
    is refused rather than ignored (`convert --quantize int8 model.tflite` wrote nothing, silently,
    where `--out model.tflite` was meant). `flags_parser`: instead of absl's own (pipeline.sweep
    takes export flags as comma lists of values)."""

    def guarded(argv):
        if not positional and len(argv) > 1:
            print(f"error: unexpected argument {argv[1]!r}: all inputs of this command are --flags "
                  "(see --help)", file=sys.stderr)
            sys.exit(2)
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
        signal.signal(signal.SIGINT, _terminate_as_interrupt)
        logging.set_verbosity(logging.WARNING)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"tensorflow|keras")
        try:
            _import_tensorflow_quietly()
            return main(argv)
        except PipelineError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
        except OSError as error:
            # A full disk outside the artifacts (TensorFlow's temporary files, a cache) is the
            # machine's state, not a bug: one line, like any other input problem.
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                if not _SIGNALLED:
                    raise
                _interrupted()
            print(f"error: no space left on the device writing {error.filename or 'a temporary file'}: "
                  "free some space (or point TMPDIR at a roomier disk); previous artifacts left as "
                  "they were", file=sys.stderr)
            sys.exit(2)
        except (KeyboardInterrupt, Exception) as error:
            if not (_SIGNALLED or isinstance(error, KeyboardInterrupt)):
                raise
            _interrupted()

    # --help prints the __main__ module's docstring: the command's, not its `python -m` shim's.
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = sys.modules[main.__module__].__doc__
    app.run(guarded, flags_parser=flags_parser or parse_flags)


def parse_flags(argv):
    """absl's parse of `argv`, a bad flag being one line and exit 2."""
    # absl reports a bad flag value with exit code 1 and two lines of usage hints; a bad flag is bad
    # input like any other, so it gets the same one line and exit code 2.
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error} (see --help)", file=sys.stderr)
        sys.exit(2)
