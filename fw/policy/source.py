"""Reading policy sources: YAML nodes with their places, merged across the files of a folder.

How it works: each file is composed (not constructed) with PyYAML, so every value is a node that
knows its line and column; syntax errors become located diagnostics. The top-level keys of all the
files are then merged as SPEC says: `rules` (and `nat` and `virtual_servers` entries) concatenate
in file order, `sets` merge (a name defined twice is an error at the second place), and the other
keys may each appear in one file only. The result, a `Merged`, still holds nodes; `build.py` turns them into a Policy.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from fw.policy import schema
from fw.policy.diagnostics import ERROR, Diagnostic, Reporter

MAX_VALUES = 1_000_000
# libyaml composes the same nodes with the same marks, about ten times faster; PyYAML's own parser
# is the reference (its error messages are the ones the golden tests expect).
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAGS = frozenset("tag:yaml.org,2002:" + t for t in
                  ("str", "int", "float", "bool", "null", "seq", "map", "timestamp"))


class Merged:
    """The top-level keys of every file: nodes, each with the reporter of its file."""

    def __init__(self):
        self.singles: dict[str, tuple[Reporter, object, object]] = {}  # key -> (rep, key, value)
        self.sets: dict[str, tuple[Reporter, object, object]] = {}  # name -> (rep, key, value)
        self.rules: list[tuple[Reporter, object]] = []  # (rep, rule node), in file order
        self.nat: list[tuple[Reporter, object]] = []  # (rep, nat list node), in file order
        self.virtual_servers: list[tuple[Reporter, object]] = []  # (rep, list node), in file order
        self.reporters: list[Reporter] = []
        self.broken = False  # a file could not be read as YAML: whole-policy checks are moot


def read_sources(path: str | Path, sink: list[Diagnostic]) -> list[tuple[str, str]]:
    """(display name, text) of the file, or of the folder's `*.yaml` files in lexical order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".yaml" and p.is_file())
        if not files:
            sink.append(Diagnostic(ERROR, str(path), "folder holds no *.yaml file"))
    elif path.exists():
        files = [path]
    else:
        sink.append(Diagnostic(ERROR, str(path), "no such file or folder"))
        files = []
    sources = []
    for file in files:
        try:
            data = file.read_bytes()
            sources.append((str(file), data.decode("utf-8")))
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            sink.append(Diagnostic(ERROR, str(file), f"not UTF-8 text (line {line})"))
        except OSError as exc:
            sink.append(Diagnostic(ERROR, str(file), f"cannot read: {exc.strerror}"))
    return sources


def compose(rep: Reporter, text: str):
    """The document's root node, or None (empty document, or a syntax error reported)."""
    if not text.strip():
        return None
    try:
        root = yaml.compose(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        root = None  # the reference parser below words the error (libyaml's wording differs)
    try:
        if root is None:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"invalid YAML: {exc.problem or exc.context}"
        where = exc.context_mark
        if exc.context and exc.problem and where is not None and where.line != mark.line:
            message += f" ({exc.context} at {where.line + 1}:{where.column + 1})"
        rep.sink.append(rep.at_mark(ERROR, mark.line, mark.column, message, 1))
        return None
    except yaml.YAMLError as exc:  # reader errors: control characters and the like
        rep.file_error(f"invalid YAML: {exc}")
        return None
    if root is not None and not _check_nodes(rep, root):
        return None
    return root


def _check_nodes(rep: Reporter, root) -> bool:
    """Duplicate keys and unsupported tags are errors; False when aliases expand (or recurse)
    past MAX_VALUES values, so that nothing walks the document again."""
    stack, count, checked = [root], 0, set()
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            rep.error(root, f"aliases expand to more than {MAX_VALUES} values (or refer to themselves)")
            return False
        if node.tag not in _TAGS and id(node) not in checked:
            checked.add(id(node))
            rep.error(node, f"unsupported YAML tag '{node.tag}'")
        if node.__class__ is MappingNode:
            if id(node) not in checked:  # an alias shares the node: check it once
                checked.add(id(node))
                _check_keys_unique(rep, node)
            for key, value in node.value:
                stack.append(key)
                stack.append(value)
        elif node.__class__ is SequenceNode:
            stack.extend(node.value)
    return True


def _check_keys_unique(rep: Reporter, node) -> None:
    keys: set = set()
    for key, _value in node.value:
        if isinstance(key, ScalarNode):
            if key.value in keys:
                rep.error(key, f"duplicate key '{key.value}'")
            keys.add(key.value)


def items(rep: Reporter, node, allowed, where: str):
    """A mapping's (name, key node, value node) for known keys; unknown keys are reported."""
    if not isinstance(node, MappingNode):
        rep.error(node, f"{where} must be a mapping")
        return []
    result = []
    for key, value in node.value:
        if not isinstance(key, ScalarNode) or key.tag != "tag:yaml.org,2002:str":
            rep.error(key, f"keys of {where} must be names")
        elif allowed is not None and key.value not in allowed:
            rep.error(key, unknown_message("key", key.value, allowed, where))
        else:
            result.append((key.value, key, value))
    return result


def unknown_message(what: str, word: str, known, where: str | None = None) -> str:
    place = f" in {where}" if where else ""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.7)
    hint = f"did you mean '{close[0]}'?" if close else "expected " + ", ".join(known)
    return f"unknown {what} '{word}'{place} ({hint})"


def merge(sources: list[tuple[str, str]], sink: list[Diagnostic]) -> Merged:
    """Compose every source and merge their top-level keys; problems go to `sink`."""
    merged = Merged()
    for name, text in sources:
        rep = Reporter(name, text, sink)
        merged.reporters.append(rep)
        sink_size = len(sink)
        root = compose(rep, text)
        if root is None:
            merged.broken = merged.broken or len(sink) > sink_size
            continue
        if not isinstance(root, MappingNode):
            rep.error(root, "a policy file must be a mapping of " + ", ".join(schema.TOP_KEYS))
            continue
        for key, key_node, value in items(rep, root, schema.TOP_KEYS, "the policy"):
            if key == "sets":
                _merge_sets(merged, rep, value)
            elif key == "rules":
                _merge_rules(merged, rep, value)
            elif key == "nat":
                merged.nat.append((rep, value))
            elif key == "virtual_servers":
                merged.virtual_servers.append((rep, value))
            elif key in merged.singles:
                first_rep, first_key, _ = merged.singles[key]
                if first_rep is not rep:  # twice in one file is a duplicate key, reported above
                    rep.error(key_node, f"'{key}' may appear in one file only "
                                        f"(already in {_place(first_rep, first_key, rep)})")
            else:
                merged.singles[key] = (rep, key_node, value)
    return merged


def _merge_sets(merged: Merged, rep: Reporter, node) -> None:
    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return
    here: set = set()
    for name, key_node, value in items(rep, node, None, "sets"):
        if name in here:  # a duplicate key, reported as such
            continue
        here.add(name)
        if name in merged.sets:
            first_rep, first_key, _ = merged.sets[name]
            if first_rep is not rep:
                rep.error(key_node, f"set '{name}' is defined twice "
                                    f"(first in {_place(first_rep, first_key, rep)})")
        else:
            merged.sets[name] = (rep, key_node, value)


def _merge_rules(merged: Merged, rep: Reporter, node) -> None:
    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return
    if not isinstance(node, SequenceNode):
        rep.error(node, "rules must be a list of rules")
        return
    merged.rules.extend((rep, item) for item in node.value)


def _place(rep: Reporter, node, here: Reporter) -> str:
    line = node.start_mark.line + 1
    return f"line {line}" if rep is here else f"{rep.file}:{line}"
