"""``%%distill``, ``%%prune`` and ``%kdnb``: parse the cell, resolve its names in the notebook, call the
public verb (`kdnb.distill`, `kdnb.prune`) once, and return its result.

The options are the verb's own keyword arguments, read from its signature (when the extension loads
and again at each run), so the magics can never disagree with the Python API::

    %%distill -o res --epochs 5
    teacher = teacher_net          # one `name = expression` per line, evaluated in the notebook
    student = small_net
    data = train_loader
    temperature = 4.0

Every mistake is a one-line `UsageError`, and the notebook's variables change only when the verb
succeeds (``-o NAME``).
"""
from __future__ import annotations

import argparse
import ast
import inspect
import traceback
import keyword
import re
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from kdnb import env
from kdnb.errors import KdnbError, first_line, is_integer, suggest

VERBS = ("distill", "prune")
# The two options `kdnb.api.with_subscribers` adds to every verb.
SUBSCRIBER_HELP = {"progress": "show a tqdm progress bar per run.",
                   "plot": "'auto' shows the live loss chart in a notebook; True forces it, False hides it.",
                   "distributed": "'auto' runs on every process under torchrun (DDP); True requires it, False "
                                  "trains each process alone."}
SIMPLE_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}


def load_ipython_extension(ipython: Any) -> None:
    """Register %%distill, %%prune and %kdnb (``%load_ext kdnb``)."""
    ipython.register_magics(KdnbMagics(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics again (``%unload_ext kdnb``; ``%reload_ext kdnb`` loads them anew)."""
    for kind, names in (("cell", VERBS), ("line", ("kdnb",))):
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
    ipython.magics_manager.registry.pop(KdnbMagics.__name__, None)


def verb_parameters(verb: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The verb's arguments that a cell can set by name."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p for name, p in inspect.signature(verb).parameters.items() if p.kind in kinds}


def argument_help(verb: Callable[..., Any]) -> dict[str, str]:
    """Each argument's description in the verb's ``Args:`` docstring section (Google style)."""
    described: dict[str, str] = {}
    section, current = False, None
    for line in (inspect.getdoc(verb) or "").splitlines():
        if line.strip().endswith(":") and not line.startswith(" "):
            section, current = line.strip() == "Args:", None
            continue
        match = re.match(r"^ {4}(\w+(?:, \w+)*)(?: \(.*?\))?: (.*)$", line) if section else None
        if match:
            current = match.group(1).split(", ")
            described.update({name: match.group(2) for name in current})
        elif current and line.startswith(" " * 8):
            described.update({name: described[name] + " " + line.strip() for name in current})
    return {**SUBSCRIBER_HELP, **described}


def plain(text: str) -> str:
    """Docstring text as a person reads it in ``%%distill?``: no reStructuredText marks (````nn.Module````,
    ```DistillResult```) and no literal-block ``::`` before the usage line that IPython's parser writes."""
    text = re.sub(r"^::\n\n  ", "", text)
    text = re.sub(r"``(.+?)``", r"\1", text)
    return re.sub(r"`([^`\n]+)`", r"\1", text)


def help_text(doc: str) -> str:
    """The parser's help as ``%%distill?`` shows it: plain text, the usage lines aligned under their first line
    (IPython indents them for a literal block) and the description wrapped."""
    usage, _, rest = plain(doc).partition("\n\n")
    usage = "\n".join(line[2:] if line.startswith("  ") else line for line in usage.splitlines())
    description, _, options = rest.partition("\n\n")
    return f"{usage}\n\n{textwrap.fill(description, 88)}\n\n{options}"


_LAST_ERROR: list[BaseException] = []  # the last error a magic reported in one line, for %kdnb traceback


def remember(error: BaseException) -> None:
    _LAST_ERROR[:] = [error]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _expression_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


class VerbMagic:
    """The cell magic of one verb: ``%%<name> [--option VALUE ...] [-o NAME]`` over ``name = expression`` lines."""

    def __init__(self, shell: Any, name: str):
        self.shell, self.name = shell, name
        self._refresh()

    def _refresh(self) -> None:
        """Read the verb and its signature now: the options always mirror the ``kdnb.api`` of this moment."""
        import kdnb.api

        verb = getattr(kdnb.api, self.name)
        if getattr(self, "verb", None) is verb:
            return
        self.verb, self.params = verb, verb_parameters(verb)
        self.magic = self._build()

    def _build(self) -> Callable[[str, str], Any]:
        def magic(line: str, cell: str = "") -> Any:
            self._refresh()
            return self(line, cell)

        first = (inspect.getdoc(self.verb) or "").split("\n\n")[0]
        magic.__name__ = self.name
        magic.__doc__ = plain(f"Call kdnb.{self.name} on the cell: one 'name = expression' per line (any of the "
                              f"options below, without the dashes), evaluated in the notebook. {first}")
        described = argument_help(self.verb)
        decorators = [argument("-o", "--output", metavar="NAME", help="store the result in this notebook variable")]
        for name, param in self.params.items():
            default = "required" if param.default is param.empty else f"default: {param.default!r}"
            text = plain(f"{described.get(name, '')} ({default})".strip()).replace("%", "%%")
            if isinstance(param.default, bool):
                decorators.append(argument(f"--{name}", nargs="?", const="True", default=argparse.SUPPRESS,
                                           metavar="BOOL", help=text))
            else:
                decorators.append(argument(f"--{name}", default=argparse.SUPPRESS, metavar="EXPR", help=text))
        for decorator in reversed(decorators):  # the parser lists them in the order of the signature
            magic = decorator(magic)
        magic = magic_arguments(f"%{self.name}")(magic)  # usage reads %%name
        magic.parser.allow_abbrev = False  # an option is its keyword's full name, nothing shorter
        magic.__doc__ = help_text(magic.__doc__)  # what `%%distill?` prints
        return magic

    def __call__(self, line: str, cell: str) -> Any:
        self._check_repeats(line)
        try:
            args, unknown = self.magic.parser.parse_argstring(line, partial=True)
        except UsageError as error:
            raise UsageError(f"%%{self.name}: {error}") from None
        if unknown and not unknown[0].startswith("-"):
            raise UsageError(f"%%{self.name}: unexpected {unknown[0]!r} on the line; write options as "
                             f"--name VALUE, and -o NAME to store the result")
        if unknown:
            self._unknown(unknown[0].split("=")[0].lstrip("-"), "on the line")
        options = vars(args)
        output = options.pop("output", None)
        sources = {name: self._line_source(name, text) for name, text in options.items()}
        for name, (lineno, node) in self._body(cell).items():
            if name in sources:
                raise UsageError(f"%%{self.name}: {name!r} is set twice (on the line and on line {lineno}); keep one")
            sources[name] = (f"line {lineno}", node)
        missing = [n for n, p in self.params.items() if p.default is p.empty and n not in sources]
        if missing:
            raise UsageError(f"%%{self.name} needs {', '.join(repr(m) for m in missing)}: add a line "
                             f"`{missing[0]} = ...` to the cell")
        if output is not None:
            self._check_output(output, sources)
        values = {name: self._evaluate(name, where, node) for name, (where, node) in sources.items()}
        try:
            result = self.verb(**values)
        except KdnbError as error:
            remember(error)
            raise UsageError(f"%%{self.name}: {' '.join(str(error).split())}") from None
        except Exception as error:  # noqa: BLE001 - any failure of the verb is one line; the trace is kept
            remember(error)
            raise UsageError(f"%%{self.name} failed: {type(error).__name__}: {first_line(error)} "
                             "(run %kdnb traceback for the full trace)") from None
        if output is not None:
            self.shell.user_ns[output] = result
        return result

    def _check_repeats(self, line: str) -> None:
        """An option given twice on the line (argparse would silently keep the last) is a mistake."""
        from IPython.utils.process import arg_split  # IPython's own splitting, as magic_arguments does

        try:
            tokens = arg_split(line, posix=True, strict=False)
        except ValueError:
            return  # unbalanced quotes: the parser reports them
        seen: set[str] = set()
        for token in tokens:
            if not token.startswith("-") or _is_number(token):
                continue
            option = "--output" if token.startswith("-o") else token.split("=")[0]  # -o NAME, -oNAME
            if option in seen:
                raise UsageError(f"%%{self.name}: {option} is given twice on the line; keep one")
            seen.add(option)

    def _unknown(self, name: str, where: str) -> None:
        raise UsageError(f"%%{self.name}: unknown option {name!r} {where}; {suggest(name, self.params)}")

    def _line_source(self, name: str, text: str) -> tuple[str, ast.expr]:
        """A value on the magic's line is a Python expression; for a text option, a bare word or anything
        that is not an expression is that text (``--criterion taylor``, ``--device cuda:0``)."""
        text_option = isinstance(self.params[name].default, str)
        if text_option and text.isidentifier() and not keyword.iskeyword(text):
            return "the line", ast.parse(repr(text), mode="eval").body
        try:
            return "the line", ast.parse(text, mode="eval").body
        except SyntaxError:
            if text_option:
                return "the line", ast.parse(repr(text), mode="eval").body
            raise UsageError(f"%%{self.name}: --{name} {text}: not a Python expression") from None

    def _body(self, cell: str) -> dict[str, tuple[int, ast.expr]]:
        """``name = expression`` per line (blank lines and comments allowed), checked before anything runs."""
        try:
            tree = ast.parse(cell)
        except SyntaxError as error:
            raise UsageError(f"%%{self.name}: line {error.lineno}: {error.msg}; each line should be "
                             f"`name = expression`") from None
        assigned: dict[str, tuple[int, ast.expr]] = {}
        lines = [statement.lineno for statement in tree.body]
        for statement in tree.body:
            if lines.count(statement.lineno) > 1:
                raise UsageError(f"%%{self.name}: line {statement.lineno} holds {lines.count(statement.lineno)} "
                                 "statements; write one `name = expression` per line")
            if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                    and isinstance(statement.targets[0], ast.Name)):
                text = ast.get_source_segment(cell, statement) or ""
                raise UsageError(f"%%{self.name}: line {statement.lineno}: expected `name = expression`, got "
                                 f"{text.splitlines()[0]!r}; run other code in a cell of its own")
            name = statement.targets[0].id
            if name not in self.params:
                self._unknown(name, f"on line {statement.lineno}")
            if name in assigned:
                raise UsageError(f"%%{self.name}: {name!r} is set twice (lines {assigned[name][0]} and "
                                 f"{statement.lineno}); keep one")
            assigned[name] = (statement.lineno, statement.value)
        return assigned

    def _check_output(self, output: str, sources: dict[str, tuple[str, ast.expr]]) -> None:
        if not output.isidentifier() or keyword.iskeyword(output):
            raise UsageError(f"%%{self.name}: -o {output}: not a valid variable name")
        read = set().union(*(_expression_names(node) for _, node in sources.values()))
        if output in read:
            raise UsageError(f"%%{self.name}: -o {output} would replace {output!r}, which this cell reads, so "
                             f"running the cell again would {self.name} the result; store it under another name")

    def _evaluate(self, name: str, where: str, node: ast.expr) -> Any:
        """The value of one option, evaluated in the notebook's namespace, and its type checked."""
        code = compile(ast.Expression(body=node), f"<%%{self.name} {name}>", "eval")
        try:
            value = eval(code, self.shell.user_ns)  # noqa: S307 — the user's own notebook expression
        except NameError as error:
            missing = getattr(error, "name", None) or str(error)
            hidden = getattr(self.shell, "user_ns_hidden", {})
            hint = suggest(missing, [n for n in self.shell.user_ns if not n.startswith("_") and n not in hidden])
            hint = hint if hint.startswith("did you mean") else "define it in a cell above first"
            raise UsageError(f"%%{self.name}: {where}: {name} = ...: name {missing!r} is not defined; {hint}") from None
        except Exception as error:  # noqa: BLE001 — any failure of the user's expression is reported in one line
            kind, detail = type(error).__name__, first_line(error)
            shown = detail if detail == kind else f"{kind}: {detail}"
            raise UsageError(f"%%{self.name}: {where}: {name} = ...: {shown}") from None
        self._check_type(name, value)
        return value

    def _check_type(self, name: str, value: Any) -> None:
        """Options annotated with simple types (``int``, ``float | None``, ...) get the right kind of value."""
        annotation = self.params[name].annotation
        if not isinstance(annotation, str):
            annotation = getattr(annotation, "__name__", str(annotation))
        parts = [part.strip() for part in annotation.split("|")]
        if not parts or not all(part in SIMPLE_TYPES for part in parts):
            return
        allowed = tuple(SIMPLE_TYPES[p] for p in parts)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if float in allowed and is_integer(value):
            ok = True
        if not ok:
            shown = repr(value)
            shown = shown if len(shown) <= 40 and "\n" not in shown else "..."
            raise UsageError(f"%%{self.name}: {name} should be {annotation}, got {type(value).__name__} {shown}")


@magic_arguments("kdnb export")  # usage reads %kdnb export
@argument("model", metavar="MODEL", help="the model: a notebook variable (any Python expression without spaces)")
@argument("path", metavar="PATH", help="where to write: *.onnx, *.pt2, *.pt, *.safetensors, or a directory for a "
                                       "transformers model")
@argument("--example", required=True, metavar="EXPR", help="an input batch the model takes, e.g. "
                                                           "'next(iter(val))[0]' (quote it when it has spaces)")
@argument("--format", default=None, metavar="NAME", help="onnx, pt2, pt, safetensors or transformers (default: "
                                                         "from PATH)")
def _export_arguments(line: str) -> None:
    """Export MODEL to PATH with kdnb.export and check it by running what was written on the example."""


@magics_class
class KdnbMagics(Magics):
    """%%distill and %%prune (built from the verbs' signatures) and the %kdnb line magic."""

    def __init__(self, shell: Any):
        super().__init__(shell)
        import kdnb.api

        self.verbs = {name: VerbMagic(shell, name) for name in VERBS if hasattr(kdnb.api, name)}
        self.magics["cell"].update({name: verb.magic for name, verb in self.verbs.items()})

    @line_magic
    def kdnb(self, line: str) -> Any:
        """%kdnb [version | status | help | traceback | export MODEL PATH --example EXPR]: the installed versions,
        what this notebook will show, the magics, the full trace of the last error a magic reported in one line,
        or `kdnb.export` of a notebook variable (``%kdnb export -h`` lists its options)."""
        command, _, rest = line.strip().partition(" ")
        command = command or "help"
        if command == "export":
            return self._export(rest)
        commands = {"version": self._version, "status": self._status, "help": self._help,
                    "traceback": self._traceback}
        if command not in commands or rest.strip():
            raise UsageError(f"%kdnb {line.strip()}: unknown command; {suggest(command, [*commands, 'export'])}")
        print(commands[command]())

    def _export(self, line: str) -> Any:
        """``%kdnb export MODEL PATH --example EXPR [--format NAME]``: one call of `kdnb.export`."""
        import kdnb.api

        if line.strip() in ("", "-h", "--help"):
            print(_export_arguments.parser.format_help().rstrip())
            return None
        try:
            args = parse_argstring(_export_arguments, line)
        except UsageError as error:
            raise UsageError(f"%kdnb export: {error}") from None
        model, example = self._value("MODEL", args.model), self._value("--example", args.example)
        try:
            return kdnb.api.export(model, args.path, example, format=args.format)
        except KdnbError as error:
            remember(error)
            raise UsageError(f"%kdnb export: {' '.join(str(error).split())}") from None

    def _value(self, name: str, text: str) -> Any:
        """A Python expression of the notebook (a variable's name, ``next(iter(val))[0]``), in one-line errors."""
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # IPython's split keeps the quotes
            text = text[1:-1]
        try:
            code = compile(text, f"<%kdnb export {name}>", "eval")
            return eval(code, self.shell.user_ns)  # noqa: S307 - the user's own notebook expression
        except NameError as error:
            missing = getattr(error, "name", None) or str(error)
            raise UsageError(f"%kdnb export: {name} {text}: name {missing!r} is not defined; define it in a cell "
                             "above first") from None
        except Exception as error:  # noqa: BLE001 - any failure of the user's expression is one line
            raise UsageError(f"%kdnb export: {name} {text}: {type(error).__name__}: {first_line(error)}") from None

    def _version(self) -> str:
        return f"kdnb {env.version()} (torch {env.version('torch')}, torch-pruning {env.version('torch-pruning')})"

    def _status(self) -> str:
        import torch

        chart = ("off (KDNB_PLOT=0)" if not env.plotting_enabled() else "live PNG" if env.in_kernel()
                 else "none outside a notebook kernel (plot=True prints a summary)")
        widgets = "yes" if env.ipywidgets_or_none() else f"no — {env.INSTALL_HINT}"
        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
        lines = [self._version(), f"device: {device}", f"live chart: {chart}", f"ipywidgets: {widgets}",
                 f"magics: {', '.join('%%' + v for v in self.verbs) or 'none'}, %kdnb"]
        return "\n".join(lines)

    def _traceback(self) -> str:
        if not _LAST_ERROR:
            return "no error from a kdnb magic yet in this session"
        return "".join(traceback.format_exception(_LAST_ERROR[0])).rstrip()

    def _help(self) -> str:
        lines = ["kdnb magics (`%%distill?` lists every option):"]
        for name, verb in self.verbs.items():
            lines.append(f"  %%{name} [-o NAME] [--option VALUE ...], then lines `option = expression`; options: "
                         f"{', '.join(verb.params)}")
        lines.append("  %kdnb version | status | help | traceback (the full trace of the last error)")
        lines.append("  %kdnb export MODEL PATH --example EXPR [--format NAME]: kdnb.export (ONNX, .pt2, .pt, "
                     ".safetensors, a transformers directory), checked by running what it wrote")
        return "\n".join(lines)

