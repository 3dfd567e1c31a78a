"""Located errors and warnings about a policy, formatted as SPEC shows them.

How it works: every YAML node carries its start and end marks (0-based line and column), so a
`Reporter` for one source file turns (node, message) into a `Diagnostic` holding the 1-based line
and column, the caret length (the token's width on its first line, at least 1) and the source line.
The loader collects every diagnostic of a run and raises one `PolicyError` at the end, so the
operator sees all errors at once.
"""

from __future__ import annotations

import re

ERROR = "error"
WARNING = "warning"

# The line breaks YAML knows (YAML 1.1, as PyYAML counts lines): marks index lines split by these.
_YAML_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
_GUTTER = 5


class Diagnostic:
    """One error or warning, located in a source file (`line` is None for a whole-file problem)."""

    __slots__ = ("severity", "file", "line", "col", "length", "message", "source_line")

    def __init__(self, severity, file, message, line=None, col=None, length=1, source_line=""):
        self.severity = severity
        self.file = file
        self.message = message
        self.line = line
        self.col = col
        self.length = length
        self.source_line = source_line

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def format(self) -> str:
        """`file:line:col: severity: message`, the source line and a caret under the token."""
        if self.line is None:
            return f"{self.file}: {self.severity}: {self.message}"
        head = f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}"
        text = f"{self.line:>{_GUTTER}} | {self.source_line}".rstrip()
        carets = f"{'':>{_GUTTER}} | {' ' * (self.col - 1)}{'^' * self.length}"
        return f"{head}\n{text}\n{carets}"

    def to_dict(self) -> dict:
        return {
            "severity": self.severity, "file": self.file, "line": self.line, "col": self.col,
            "length": self.length, "message": self.message, "source_line": self.source_line,
        }

    def sort_key(self, file_order: dict[str, int]) -> tuple:
        return (file_order.get(self.file, -1), self.line or 0, self.col or 0)

    def __repr__(self) -> str:
        return f"Diagnostic({self.file}:{self.line}:{self.col}: {self.severity}: {self.message})"


class PolicyError(Exception):
    """An invalid policy: `diagnostics` holds every error found, `warnings` the warnings."""

    def __init__(self, diagnostics: list[Diagnostic], warnings: list[Diagnostic] | None = None):
        self.diagnostics = list(diagnostics)
        self.warnings = list(warnings or ())
        count = len(self.diagnostics)
        first = self.diagnostics[0].format().splitlines()[0] if count else "invalid policy"
        super().__init__(f"{count} error{'s' if count != 1 else ''} in policy; first: {first}")

    def format(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)


def split_lines(text: str) -> list[str]:
    """The source's lines as YAML numbers them."""
    return _YAML_LINE_BREAK.split(text)


class Reporter:
    """Collects diagnostics about one source file (several reporters may share one sink list)."""

    __slots__ = ("file", "text", "lines", "sink")

    def __init__(self, file: str, text: str, sink: list[Diagnostic]):
        self.file = file
        self.text = text
        self.lines = split_lines(text)
        self.sink = sink

    def error(self, node, message: str) -> None:
        self.sink.append(self.at(ERROR, node, message))

    def warning(self, node, message: str) -> None:
        self.sink.append(self.at(WARNING, node, message))

    def file_error(self, message: str) -> None:
        self.sink.append(Diagnostic(ERROR, self.file, message))

    def at(self, severity: str, node, message: str) -> Diagnostic:
        """A diagnostic under `node` (anything with start_mark and end_mark)."""
        start, end = node.start_mark, node.end_mark
        if end.line != start.line and isinstance(node.value, list):  # a block mapping or list:
            if node.value and isinstance(node.value[0], tuple):  # underline its first key
                return self.at(severity, node.value[0][0], message)
            return self.at_mark(severity, start.line, start.column, message, 1)
        return self.at_mark(severity, start.line, start.column, message,
                            end.column - start.column if end.line == start.line else None)

    def at_mark(self, severity, line0: int, col0: int, message: str, length: int | None = None):
        """A diagnostic at a 0-based (line, column); length None runs to the end of the line."""
        source_line = self.lines[line0] if 0 <= line0 < len(self.lines) else ""
        if length is None:
            length = len(source_line.rstrip()) - col0
        return Diagnostic(severity, self.file, message, line0 + 1, col0 + 1, max(length, 1),
                          source_line)
