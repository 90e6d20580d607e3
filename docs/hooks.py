"""The documentation site's generated pages, and graceful's docstrings as Markdown.

Two entry points, one module:

* **mkdocs hooks** (``hooks:`` in ``mkdocs.yml``). A page line that is exactly
  ``<!-- generated: WHAT -->`` is replaced by:

  - ``settings``: the settings table, from ``graceful.core.settings.SETTINGS``;
  - ``cli``: every command of ``graceful.cli.build_parser()``, its arguments and help;
  - ``scopes SCOPE``: the commands' settings of that scope (``generation`` or
    ``supervisor``), by name;
  - ``spellings PROGRAM``: each option of uvicorn's, hypercorn's or gunicorn's
    command line, and what ``graceful serve`` makes of it: the setting, the
    attribute of each server's ``Config`` it reaches, or why it is refused;
  - ``docstring MODULE``: the module's docstring (reStructuredText sections,
    simple tables and roles turned into Markdown);
  - ``constants MODULE``: the module's public constants documented with ``#:``;
  - ``exports``: graceful's public names and the modules that define them;
  - ``include PATH``: a Markdown file outside ``docs/`` (a benchmark's results).

  Images under ``benchmarks/results/`` are added to the site at the same paths.

  The settings and the command line are imported as the build starts, and any
  section that cannot be generated stops the build with the reason: a reference
  is never left out quietly.

* **a griffe extension** (``RstDocstrings``, named in the mkdocstrings options):
  the same conversion for every docstring mkdocstrings renders. Sphinx roles
  (``:class:`~graceful.x.Y```) become optional cross-references: a link where the
  object has a page, code where it has none.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import posixpath
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import griffe
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

# --- reStructuredText, as graceful's docstrings use it, to Markdown ----------------

_ROLE = re.compile(r":(?:py:)?(?P<role>[a-z]+):`(?P<tilde>~?)(?P<target>[^`<>]+?)`")
_BORDER = re.compile(r"^\s*=+(?: +=+)+\s*$")
_UNDERLINE = re.compile(r"^(?P<char>[-=~^])(?P=char)+$")


def markdown_of(
    text: str, *, heading: str = "###", resolve: Callable[[str], str] | None = None
) -> str:
    """``text`` (a docstring) as Markdown: section titles become ``heading``-level
    headings, simple tables become Markdown tables, ``::`` literal blocks code, and
    roles optional cross-references (their targets passed through ``resolve``)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if _BORDER.match(line):
            table, i = _table(lines, i)
            out.extend(table)
            continue
        if (
            line.strip()
            and not line.startswith(" ")
            and _UNDERLINE.match(following)
            and len(following) >= len(line.rstrip())
        ):
            out.append(f"{heading} {line.strip()}")
            i += 2
            continue
        if line.rstrip().endswith("::") and not line.strip().startswith(".."):
            stripped = line.rstrip()[:-2].rstrip()
            out.append(f"{stripped}:" if stripped else "")
            i += 1
            continue
        out.append(line)
        i += 1
    return _doc_links(_roles("\n".join(out), resolve or (lambda target: target)))


def _roles(text: str, resolve: Callable[[str], str]) -> str:
    def link(match: re.Match[str]) -> str:
        target = match["target"].strip()
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target
        identifier = resolve(target)
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    # a role is never rewritten inside a code span (``:class:`x` `` as an example)
    parts = re.split(r"(``.*?``)", text)
    return "".join(part if part.startswith("``") else _ROLE.sub(link, part) for part in parts)


_DOC_PATH = re.compile(r"(?<![\w/.`])docs/(?P<page>[\w/-]+\.md)")


def _doc_links(text: str) -> str:
    """Each mention of a page of the site (``docs/guides/x.md``, outside code spans)
    as a link to it, wherever the text is rendered (mkdocs resolves a link that
    starts with ``/`` from ``docs/``). A mention of a page that does not exist fails
    the build."""

    def link(match: re.Match[str]) -> str:
        if not (_ROOT / "docs" / match["page"]).is_file():
            raise PluginError(f"docs: {match[0]} is mentioned but does not exist")
        return f"[`{match[0]}`](/{match['page']})"

    parts = re.split(r"(``.*?``|`[^`]*`)", text)
    return "".join(p if p.startswith("`") else _DOC_PATH.sub(link, p) for p in parts)


def _table(lines: list[str], start: int) -> tuple[list[str], int]:
    """The simple table whose top border is ``lines[start]``: (Markdown, next index)."""
    border = lines[start]
    indent = len(border) - len(border.lstrip())
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
    rows: list[list[str]] = []
    header: list[str] | None = None
    i = start + 1
    while i < len(lines):
        line = lines[i]
        i += 1
        if _BORDER.match(line):
            if header is not None or i >= len(lines) or not lines[i].strip():
                break  # the closing border
            header, rows = [" ".join(p).strip() for p in zip(*rows, strict=True)], []
            continue
        if not line.strip():
            continue
        cells = []
        for n, (begin, end) in enumerate(spans):
            stop = spans[n + 1][0] if n + 1 < len(spans) else max(len(line), end)
            cells.append(line[begin:stop].strip())
        if rows and not cells[0]:  # a continuation line
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    if header is None:  # a table without a header row
        header = [""] * len(spans)
    body = [header, ["---"] * len(spans), *rows]
    pad = " " * indent
    return ["", *(pad + "| " + " | ".join(_cell(c) for c in row) + " |" for row in body), ""], i


def _cell(text: str) -> str:
    """A table cell: pipes outside code spans escaped."""
    parts = re.split(r"(``.*?``|`[^`]*`)", text)
    return "".join(p if p.startswith("`") else p.replace("|", r"\|") for p in parts) or " "


class RstDocstrings(griffe.Extension):
    """Every docstring mkdocstrings renders, as Markdown (see :func:`markdown_of`),
    with a role's target found from where the docstring is: ``:meth:`run``` in
    ``Service``'s docstring names ``graceful.api.service.Service.run``."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        heading = "####" if obj.is_module else "#####"
        obj.docstring.value = markdown_of(
            obj.docstring.value, heading=heading, resolve=lambda t: _resolve(obj, loader, t)
        )


def _resolve(obj: griffe.Object, loader: griffe.GriffeLoader, target: str) -> str:
    """The full path of ``target`` as seen from ``obj``, or ``target`` itself."""
    scopes = [obj, *_parents(obj)]
    for scope in scopes:
        path = f"{scope.path}.{target}"
        try:
            found = loader.modules_collection.get_member(path)
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        try:
            return str(found.final_target.path if found.is_alias else found.path)
        except griffe.AliasResolutionError:
            return path
    return target


def _parents(obj: griffe.Object) -> Iterator[griffe.Object]:
    parent = obj.parent
    while parent is not None:
        yield parent
        parent = parent.parent


# --- the generated pages ----------------------------------------------------------

_MARKER = re.compile(r"^<!-- generated: (?P<what>[a-z]+)(?: (?P<arg>[\w./-]+))? -->$", re.M)
#: The repository's top directory (``mkdocs.yml``'s).
_ROOT = Path(__file__).resolve().parent.parent
#: Files outside ``docs/`` that the site shows, at the same path in the site.
_ASSETS = ("benchmarks/results/*.png",)


def settings_table() -> str:
    """The settings reference: one row per ``graceful.core.settings.SETTINGS`` entry."""
    settings = _import("graceful.core.settings").SETTINGS
    rows = [
        "| setting | type | default | flag | environment variable | scope | what it does |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in settings:
        cells = [
            f"`{s.name}`",
            _cell(s.type_label),
            f"`{s.default_label}`" if s.default_label else "",
            ", ".join(f"`{flag}`" for flag in (s.flag, *s.aliases)) if s.flag else "",
            f"`{s.env}`" if s.env else "",
            s.scope,
            _cell(s.help),
        ]
        rows.append("| " + " | ".join(c or "—" for c in cells) + " |")
    return "\n".join(rows)


def scopes_list(scope: str) -> str:
    """The settings of the commands of one scope (``generation``: what a reload
    applies; ``supervisor``: what needs ``graceful upgrade``), as a list of names."""
    settings = _import("graceful.core.settings")
    commands = ("graceful serve", "graceful run")
    names = [
        f"`{s.name}`"
        for s in settings.SETTINGS
        if s.scope == scope and any(entry in s.entries for entry in commands)
    ]
    return ", ".join(names) + "."


def spellings_table(program: str) -> str:
    """What ``graceful serve`` makes of each option of ``program``'s command line
    (``graceful.cli.THEIR_OPTIONS``): the setting it is, the attribute of each
    server's ``Config`` it reaches (or why a server refuses it), or why it is refused."""
    settings = _import("graceful.core.settings")
    cli = _import("graceful.cli")
    spelled: dict[str, Any] = {}
    for s in settings.taken_by("graceful serve"):
        if s.flag is not None:
            for flag in (s.flag, *s.aliases):
                spelled[flag] = s
            if s.kind.cli == "toggle":
                spelled["--no-" + s.flag.removeprefix("--")] = s
    servers = settings.ServerOptions
    rows = [
        f"| {program}'s | `graceful serve` | with uvicorn | with hypercorn |",
        "| --- | --- | --- | --- |",
    ]
    for flag in cli.THEIR_OPTIONS[program]:
        s = spelled.get(flag)
        if flag in cli.REFUSED_SERVER_OPTIONS:
            cells = [f"refused: {_cell(cli.REFUSED_SERVER_OPTIONS[flag])}", "—", "—"]
        elif s is None:
            python = " (from Python: `serve_asgi(..., **options)`)" if program == "uvicorn" else ""
            cells = [f"not taken{python}", "—", "—"]
        elif s in settings.settings_of(servers):
            cells = [f"`{s.flag}`"]
            for server in ("uvicorn", "hypercorn"):
                try:
                    cells.append(f"`{s.server_attribute(server)}`")
                except settings.ConfigError as exc:
                    cells.append(f"refused: {_cell(str(exc).partition(': ')[2])}")
        else:
            cells = [f"`{s.flag}`: {_cell(s.help)}", "graceful's own", "graceful's own"]
        rows.append(f"| `{flag}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cli_reference() -> str:
    """Every command of the ``graceful`` command line: usage, arguments, help."""
    parser = _import("graceful.cli").build_parser()
    out = [f"`{parser.prog}`: {parser.description}", "", *_usage(parser)]
    for name, command in _subcommands(parser).items():
        out += ["", f"## `{parser.prog} {name}`", ""]
        if command.description or _help_of(parser, name):
            out += [command.description or _help_of(parser, name), ""]
        out += _usage(command)
        out += ["", *_arguments(command)]
    return "\n".join(out)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_of(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return choice.help or ""
    return ""


def _usage(parser: argparse.ArgumentParser) -> list[str]:
    usage = " ".join(parser.format_usage().removeprefix("usage: ").split())
    return ["```", usage, "```"]


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = ["| argument | default | what it does |", "| --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            metavar = (
                ""
                if action.nargs == 0
                else " " + formatter._format_args(action, action.dest.upper())
            )
            name = ", ".join(f"`{option}{metavar}`" for option in action.option_strings)
        else:
            name = f"`{formatter._format_args(action, action.dest)}`"
        default = action.default
        shown = (
            ""
            if default is None or default is argparse.SUPPRESS or action.nargs == 0
            else f"`{default}`"
        )
        what = formatter._expand_help(action) if action.help else ""
        if action.required and action.option_strings:
            what = "required" + ("; " + what if what else "")
        if action.option_strings and "append" in type(action).__name__.lower():
            what += "" if "repeatable" in what else ("; " if what else "") + "repeatable"
        rows.append(f"| {name} | {shown or '—'} | {_doc_links(_cell(what)) if what else '—'} |")
    return rows


def docstring(module: str) -> str:
    """The docstring of ``module``, as Markdown."""
    text = inspect.getdoc(_import(module))
    if not text:
        raise PluginError(f"docs: module {module} has no docstring to render")
    return markdown_of(text, heading="##", resolve=lambda target: _qualified(module, target))


def _qualified(module: str, target: str) -> str:
    """``target`` as a full path, if it names something in ``module``."""
    value: Any = _import(module)
    for part in target.split("."):
        value = getattr(value, part, None)
        if value is None:
            return target
    return f"{module}.{target}"


def constants(module: str) -> str:
    """``module``'s public constants that carry a ``#:`` comment, with their values."""
    imported = _import(module)
    source = inspect.getsource(imported)
    lines = source.splitlines()
    rows = ["| name | value | meaning |", "| --- | --- | --- |"]
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        if not isinstance(target, ast.Name) or target.id.startswith("_"):
            continue
        comment: list[str] = []
        n = node.lineno - 2
        while n >= 0 and lines[n].lstrip().startswith("#:"):
            comment.insert(0, lines[n].lstrip()[2:].strip())
            n -= 1
        if comment:
            value = getattr(imported, target.id)
            rows.append(f"| `{target.id}` | `{value!r}` | {_cell(' '.join(comment))} |")
    if len(rows) == 2:
        raise PluginError(f"docs: module {module} has no constants documented with #:")
    return "\n".join(rows)


def exports() -> str:
    """graceful's public names, each linked to its reference, with the module that
    defines it (``graceful._MODULE_OF``, which the lazy imports follow)."""
    package = _import("graceful")
    rows = ["| name | defined in |", "| --- | --- |"]
    for name in package.__all__:
        module = package._MODULE_OF[name]
        rows.append(f"| [`{name}`][graceful.{name}] | `{module}` |")
    return "\n".join(rows)


def include(path: str, page_uri: str = "") -> str:
    """A Markdown file of the repository outside ``docs/`` (a benchmark's results, as
    its script wrote them): its title in bold, its other headings one level down
    (the page's own section holds it), and its relative links rebased from its own
    directory to the page at ``page_uri`` (a page of the site, such as
    ``guides/x.md``), whose files :func:`on_files` adds under the same paths."""
    file = _ROOT / path
    if not file.is_file():
        raise PluginError(f"docs: {path} does not exist")
    text = file.read_text(encoding="utf-8")
    text = re.sub(r"^# (.+)$", r"**\1**", text, flags=re.M)
    text = re.sub(r"^(##+) ", r"#\1 ", text, flags=re.M)
    source = posixpath.dirname(path)
    here = posixpath.dirname(page_uri) or "."

    def rebase(match: re.Match[str]) -> str:
        target = match["target"]
        if re.match(r"[a-z]+:|/|#", target):
            return match[0]
        moved = posixpath.relpath(posixpath.join(source, target), here)
        return f"]({moved})"

    return re.sub(r"\]\((?P<target>[^)\s]+)\)", rebase, text)


_GENERATORS: dict[str, Callable[..., str]] = {
    "settings": settings_table,
    "cli": cli_reference,
    "spellings": spellings_table,
    "scopes": scopes_list,
    "docstring": docstring,
    "constants": constants,
    "include": include,
    "exports": exports,
}


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise PluginError(
            f"docs: cannot import {module} to generate its reference: {type(exc).__name__}: {exc}"
        ) from exc


def _generate(match: re.Match[str], page_uri: str) -> str:
    what, arg = match["what"], match["arg"]
    generator = _GENERATORS.get(what)
    if generator is None:
        raise PluginError(f"docs: unknown generated section {match[0]!r}")
    try:
        if what == "include":
            return include(arg, page_uri)
        return generator(arg) if arg else generator()
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"docs: {match[0]} failed: {type(exc).__name__}: {exc}") from exc


def on_pre_build(config: Any) -> None:
    """Fail the build at once, with the reason, if a generated reference's source
    cannot be imported."""
    for module in ("graceful.core.settings", "graceful.cli"):
        _import(module)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return _MARKER.sub(lambda match: _generate(match, page.file.src_uri), markdown)


def on_files(files: Files, config: Any) -> Files:
    """Add the images of :data:`_ASSETS` to the site, at their own paths."""
    for pattern in _ASSETS:
        for path in sorted(_ROOT.glob(pattern)):
            uri = path.relative_to(_ROOT).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
