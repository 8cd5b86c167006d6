# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Round-trip parser and editor for Xen xl domain config files (xl.cfg(5)).

The grammar is libxlutil's (Xen 4.17, tools/libs/util/libxlu_cfg_l.l and libxlu_cfg_y.y),
followed token for token so that this module accepts the files `xl create` accepts and
reads the same values from them (tests check both against Debian's libxlutil.so.4.17):

    file       := { stmt } [ assignment ]
    stmt       := assignment endstmt | endstmt
    endstmt    := NEWLINE | ';'
    assignment := IDENT ( '=' | '+=' ) value
    value      := STRING | NUMBER
                | '[' nlok [ value nlok { ',' nlok value nlok } [ ',' nlok ] ] ']'
    nlok       := { NEWLINE }

    IDENT   [a-z][._0-9a-z]*         NUMBER  [0-9][0-9a-fx]*     blanks [ \\t] (ignored)
    NEWLINE \\n | #.*\\n              STRING  '...' or "..." on one line, with escapes
            \\\\ \\" \\' \\a \\b \\f \\n \\r \\t \\v (\\x.. is always refused by libxlutil;
            \\[0-7] followed by two more digits is accepted but, by a libxlutil quirk,
            contributes nothing to the value)

Every other character outside a string or comment is a lexical error (`\\r` too: xl
refuses CRLF files). `+=` appends to the setting's earlier value (string to string,
list to list; mixing them is an error). The last assignment of a name wins.

Deliberately stricter than libxlutil in two corners: an invalid character that is the
very last byte of the file (libxlutil silently drops it, so `vcpus = 0x1F` at the end of
a file means 0x1) is refused, and so are lists nested deeper than Python's recursion
limit (libxlutil's parser stack allows a few thousand levels).

`XlConfig` keeps the exact text: `XlConfig.parse(text).render() == text` for every input
it accepts. Edits splice only the text of the setting concerned and re-parse the result,
so a document is never left in a state xl would refuse. A file that cannot be parsed
raises `XlConfigError` (line, column, one sentence); nothing is ever rewritten from it.

Standard library only; runs on Python 3.8+ (Ansible module_utils on dom0).
"""

import difflib
import re
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

__all__ = [
    "XlConfig",
    "XlConfigError",
    "XlValue",
    "format_value",
    "is_setting_name",
]

# What `get` returns: int for an xl NUMBER that C strtol(.., 0) reads whole (what
# xlu_cfg_get_long accepts), str for everything else, lists of those for lists.
XlValue = Union[int, str, List[Any]]

_IDENT = re.compile(r"[a-z][._0-9a-z]*")
_IDENT_FULL = re.compile(r"[a-z][._0-9a-z]*\Z")
_NUMBER = re.compile(r"[0-9][0-9a-fx]*")
_BLANKS = re.compile(r"[ \t]+")
_NEWLINE = re.compile(r"#[^\n]*\n|\n")
_STRINGS = {
    "'": re.compile(r"'(?:[^'\\\n]|\\[^\n])*'"),
    '"': re.compile(r'"(?:[^"\\\n]|\\[^\n])*"'),
}
# A NUMBER token xlu_cfg_get_long reads as a whole: hex, octal or decimal digits.
_LONG = re.compile(r"0x([0-9a-f]+)\Z|(0[0-7]*)\Z|([1-9][0-9]*)\Z")
_LONG_MAX = 2**63 - 1
_SIMPLE_ESCAPES = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_ESCAPE_OUT = {
    "\\": "\\\\",
    '"': '\\"',
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}
_C_SPACE = " \t\n\v\f\r"
_PYTHONISH = "+-.():"
# Characters of an arithmetic expression or a signed or decimal number, none of which xl
# reads in a value.
_ARITHMETIC = "+-*/%().~^&|"
# A list written on one line when it is this short; longer ones get one item per line.
_ONE_LINE_LIST = 72


class XlConfigError(ValueError):
    """An xl config text xl would refuse: where, and one sentence saying what is wrong."""

    def __init__(self, message: str, line: int, column: int, source: Optional[str] = None):
        self.message = message
        self.line = line
        self.column = column
        self.source = source
        where = f"line {line}, column {column}"
        if source:
            where = f"{source}: {where}"
        super().__init__(f"{where}: {message}")


class _Token(NamedTuple):
    kind: str  # ws nl ident number string [ ] , = += ;
    start: int
    end: int


class _Atom(NamedTuple):
    text: str  # the string's value after escapes, or the NUMBER's text
    number: bool


class _Setting(NamedTuple):
    name: str
    op: str
    value: Any  # _Atom or list of values
    first: int  # token indexes: the IDENT ...
    last: int  # ... and the value's last token
    start: int  # text offsets: IDENT
    op_start: int
    op_end: int
    value_start: int
    value_end: int


def is_setting_name(name: Any) -> bool:
    """Whether `name` is a valid xl setting name (lower-case IDENT)."""
    return isinstance(name, str) and _IDENT_FULL.match(name) is not None


def _position(text: str, offset: int) -> Tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _strtoul10_length(buf: str) -> int:
    """How many characters of `buf` C strtoul(buf, &end, 10) consumes (0 if none)."""
    i = 0
    while i < len(buf) and buf[i] in _C_SPACE:
        i += 1
    if i < len(buf) and buf[i] in "+-":
        i += 1
    j = i
    while j < len(buf) and "0" <= buf[j] <= "9":
        j += 1
    return j if j > i else 0


class _Parser:
    def __init__(self, text: str, source: Optional[str]) -> None:
        self.text = text
        self.source = source
        self.tokens: List[_Token] = []
        self.sig: List[int] = []  # indexes of the tokens the grammar sees (not blanks)
        self.settings: List[_Setting] = []

    def error(self, offset: int, message: str) -> XlConfigError:
        line, column = _position(self.text, offset)
        return XlConfigError(message, line, column, self.source)

    # -- lexer (libxlu_cfg_l.l) --------------------------------------------------------

    def lex(self) -> None:
        text, n, pos = self.text, len(self.text), 0
        tokens = self.tokens
        while pos < n:
            c = text[pos]
            if c in " \t":
                m = _BLANKS.match(text, pos)
                kind = "ws"
            elif c in "\n#":
                m = _NEWLINE.match(text, pos)
                if m is None:
                    raise self.error(
                        pos,
                        "the comment on the last line has no newline after it, which xl "
                        "refuses; end the file with a newline",
                    )
                kind = "nl"
            elif c in _STRINGS:
                m = _STRINGS[c].match(text, pos)
                if m is None:
                    raise self._unterminated(pos)
                kind = "string"
            elif "a" <= c <= "z":
                m = _IDENT.match(text, pos)
                kind = "ident"
            elif "0" <= c <= "9":
                m = _NUMBER.match(text, pos)
                kind = "number"
            elif c == "+" and text.startswith("+=", pos):
                tokens.append(_Token("+=", pos, pos + 2))
                pos += 2
                continue
            elif c in "[],=;":
                tokens.append(_Token(c, pos, pos + 1))
                pos += 1
                continue
            else:
                raise self._bad_character(pos)
            if m is None:
                # Not an assert: asserts vanish under python -O, and a token without a
                # match would silently corrupt the round trip.
                raise AssertionError(f"no token matched at offset {pos}")
            tokens.append(_Token(kind, pos, m.end()))
            if kind == "string":
                self.dequote(pos, m.end())
            pos = m.end()

    def _unterminated(self, pos: int) -> XlConfigError:
        quote = self.text[pos]
        eol = self.text.find("\n", pos)
        line = self.text[pos : len(self.text) if eol < 0 else eol]
        if line.endswith("\\") and not line.endswith("\\\\"):
            return self.error(
                pos,
                "this string ends its line with a backslash, but xl strings cannot continue "
                f"on the next line; close the string with {quote} on this line",
            )
        return self.error(
            pos, f"this string has no closing {quote} on its line; add the closing {quote}"
        )

    def _bad_character(self, pos: int) -> XlConfigError:
        c = self.text[pos]
        if c == "\r":
            return self.error(
                pos,
                "carriage return (a CRLF line ending?), which xl refuses; convert the file "
                "to LF line endings",
            )
        if c == "\x00":
            return self.error(pos, "NUL byte, which xl refuses; remove it")
        if pos == len(self.text) - 1 and (c < "\x80" or "\udc80" <= c <= "\udcff"):
            # libxlutil silently drops an invalid character when it is the very last
            # byte of the input (its lexer hits end of file before reporting it), so
            # "vcpus = 0x1F" would mean 0x1. Refuse rather than guess.
            return self.error(
                pos,
                f"unexpected {c!r} at the very end of the file, which xl would silently drop; "
                "remove it or end the file with a newline",
            )
        specific = self._bad_word(pos) if "A" <= c <= "Z" or c == "_" else None
        if specific is not None:
            return self.error(pos, specific)
        if c in _ARITHMETIC and self._in_value():
            return self.error(
                pos,
                f"unexpected {c!r} in a value: xl does no arithmetic and has no negative or "
                "decimal numbers, so a value is one number, one quoted string or a [ list ]; "
                "write the result itself (memory = 1024, not 512 * 2), or quote it as a string",
            )
        hint = " (xl config files are not Python)" if c in _PYTHONISH else ""
        return self.error(
            pos,
            f"unexpected character {c!r}{hint}; xl accepts only lower-case names, numbers, quoted "
            "strings, [ ] , = += ; and # comments here",
        )

    def _word_start(self, pos: int) -> int:
        """Where the run of name characters holding `pos` starts (the lexer may already
        have taken its lower-case beginning as a token)."""
        start = pos
        while start > 0 and (self.text[start - 1].isalnum() or self.text[start - 1] in "_."):
            start -= 1
        return start

    def _in_value(self) -> bool:
        """Whether the lexer is after the = of a statement (the last non-blank token so far
        is not a newline or ;)."""
        for tok in reversed(self.tokens):
            if tok.kind != "ws":
                return tok.kind not in ("nl", ";")
        return False

    def _bad_word(self, pos: int) -> Optional[str]:
        """One sentence for an upper-case letter or _ where xl wants a lower-case token."""
        start = self._word_start(pos)
        end = pos
        while end < len(self.text) and (self.text[end].isalnum() or self.text[end] in "_."):
            end += 1
        word = self.text[start:end]
        if not word.isascii():
            return None
        if word[0].isdigit():
            return (
                f"the number {word!r} has upper-case letters, which xl refuses; write it in "
                f"lower case: {word.lower()}"
            )
        before = [t for t in self.tokens if t.end <= start and t.kind != "ws"]
        if before and before[-1].kind in ("number", "string", "]"):
            return (
                f"unexpected {word!r} after a complete value; xl takes one value per "
                "setting, so remove it or turn it into a comment with #"
            )
        if before and before[-1].kind not in ("nl", ";"):
            return (
                f"the value {word!r} is not quoted, and xl reads only lower-case words outside "
                f'quotes (and only as setting names); write it as a string: "{word}"'
            )
        lower = word.lower()
        if is_setting_name(lower):
            return (
                f"the setting name {word!r} is not lower-case, which xl refuses; write it in "
                f"lower case: {lower}"
            )
        return (
            f"the setting name {word!r} is not one xl accepts; start it with a lower-case "
            "letter and use only lower-case letters, digits, '_' and '.'"
        )

    def dequote(self, start: int, end: int) -> str:
        """A string token's value, exactly as libxlutil's xlu__cfgl_dequote builds it."""
        token = self.text[start:end]
        out: List[str] = []
        p, stop = 1, len(token) - 1
        while p < stop:
            c = token[p]
            p += 1
            if c != "\\":
                if c == "\x00":
                    raise self.error(start + p - 1, "NUL byte in a string, which xl refuses")
                out.append(c)
                continue
            nc = token[p]
            p += 1
            if nc in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[nc])
            elif nc == "x":
                raise self.error(
                    start + p - 2,
                    "xl refuses every \\x escape in strings (libxlutil's hex escape parser "
                    "always fails); write the character itself",
                )
            elif "0" <= nc <= "7":
                # libxlutil reads up to three more characters with strtoul(.., 10),
                # needs it to consume two, skips them and stores nothing.
                used = _strtoul10_length(token[p : p + 3])
                if used <= 1:
                    raise self.error(
                        start + p - 2,
                        "xl refuses this octal escape in a string; write the character itself",
                    )
                p += used
            else:
                raise self.error(
                    start + p - 2,
                    f"invalid escape \\{nc} in a string; xl knows only \\\\ \\\" \\' \\a \\b \\f "
                    "\\n \\r \\t \\v",
                )
        return "".join(out)

    # -- parser (libxlu_cfg_y.y) -------------------------------------------------------

    def parse(self) -> None:
        self.lex()
        try:
            self.statements()
        except RecursionError:
            raise self.error(0, "lists are nested too deeply to parse; flatten them") from None

    def statements(self) -> None:
        sig = self.sig = [i for i, t in enumerate(self.tokens) if t.kind != "ws"]
        i = 0
        while i < len(sig):
            tok = self.tokens[sig[i]]
            if tok.kind in ("nl", ";"):
                i += 1
                continue
            if tok.kind != "ident":
                raise self.error(
                    tok.start,
                    "expected a setting name (lower-case letters, digits, _ and .) at the start "
                    f"of a statement; found {self.describe(tok)}",
                )
            name = self.text[tok.start : tok.end]
            first = sig[i]
            i += 1
            op = self.tokens[sig[i]] if i < len(sig) else None
            if op is None or op.kind not in ("=", "+="):
                raise self.at(
                    op,
                    f"expected = or += after the setting name {name!r}; found {self.describe(op)}",
                )
            i += 1
            value_first = i
            value, i = self.value(i, name)
            last = sig[i - 1]
            end = self.tokens[sig[i]] if i < len(sig) else None
            if end is not None and end.kind not in ("nl", ";"):
                raise self.error(
                    end.start,
                    f"expected the end of the line (or ;) after the value of {name!r}; "
                    f"found {self.describe(end)}",
                )
            self.settings.append(
                _Setting(
                    name,
                    op.kind,
                    value,
                    first,
                    last,
                    tok.start,
                    op.start,
                    op.end,
                    self.tokens[sig[value_first]].start,
                    self.tokens[last].end,
                )
            )

    def at(self, tok: Optional[_Token], message: str) -> XlConfigError:
        return self.error(len(self.text) if tok is None else tok.start, message)

    def describe(self, tok: Optional[_Token]) -> str:
        if tok is None:
            return "the end of the file"
        if tok.kind == "nl":
            return "the end of the line" if self.text[tok.start] == "\n" else "a comment"
        return repr(self.text[tok.start : tok.end])

    def value(self, i: int, name: str, opening: Optional[_Token] = None) -> Tuple[Any, int]:
        """Parse the value at sig[i]; `opening` is the [ of the list it is an item of."""
        sig, tokens = self.sig, self.tokens
        tok = tokens[sig[i]] if i < len(sig) else None
        if tok is not None and tok.kind == "string":
            return _Atom(self.dequote(tok.start, tok.end), False), i + 1
        if tok is not None and tok.kind == "number":
            return _Atom(self.text[tok.start : tok.end], True), i + 1
        if tok is None and opening is not None:
            raise self.error(
                opening.start, f"the list of {name!r} is never closed; add the closing ]"
            )
        if tok is None or tok.kind != "[":
            where = "on the same line" if opening is None else "as a list item"
            raise self.at(
                tok,
                f"expected a value for {name!r} (a number, a quoted string or a [ list ]) "
                f"{where}; found {self.describe(tok)}",
            )
        opening = tok
        items: List[Any] = []
        i = self.newlines(i + 1)
        if i < len(sig) and tokens[sig[i]].kind == "]":
            return items, i + 1
        while True:
            item, i = self.value(i, name, opening)
            items.append(item)
            i = self.newlines(i)
            tok = tokens[sig[i]] if i < len(sig) else None
            if tok is not None and tok.kind == ",":
                i = self.newlines(i + 1)
                if i < len(sig) and tokens[sig[i]].kind == "]":
                    return items, i + 1
                continue
            if tok is not None and tok.kind == "]":
                return items, i + 1
            if tok is None:
                raise self.error(
                    opening.start, f"the list of {name!r} is never closed; add the closing ]"
                )
            raise self.error(
                tok.start,
                f"expected , or ] after an item of the list of {name!r}; "
                f"found {self.describe(tok)}",
            )

    def newlines(self, i: int) -> int:
        while i < len(self.sig) and self.tokens[self.sig[i]].kind == "nl":
            i += 1
        return i


def _concat(parser: _Parser, setting: _Setting, prev: Any, new: Any) -> Any:
    """xlu__cfg_concat_vals: `name += value` after an earlier value."""
    if isinstance(prev, list) != isinstance(new, list):
        added = "list" if isinstance(new, list) else "string"
        earlier = "list" if isinstance(prev, list) else "string"
        raise parser.error(
            setting.op_start,
            f"{setting.name!r} += adds a {added} to the earlier {earlier} value, which xl "
            "refuses; use the same kind of value (both strings or both lists)",
        )
    if isinstance(new, list):
        return prev + new
    return _Atom(prev.text + new.text, False)


def _strtol(text: str) -> Optional[int]:
    match = _LONG.match(text)
    if match is None:
        return None
    hexdigits, octal, decimal = match.groups()
    if hexdigits is not None:
        value = int(hexdigits, 16)
    elif octal is not None:
        value = int(octal, 8)
    else:
        value = int(decimal, 10)
    return value if value <= _LONG_MAX else None


def _python(value: Any, appended: bool = False) -> XlValue:
    if isinstance(value, list):
        return [_python(item) for item in value]
    if value.number and not appended:
        number = _strtol(value.text)
        if number is not None:
            return number
    return value.text


def _raw(value: Any) -> Any:
    if isinstance(value, list):
        return [_raw(item) for item in value]
    return value.text


def _normalise(value: Any, where: str = "the value") -> XlValue:
    """`value` as `get` would return it after `set`; refuses what xl cannot hold."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(
                f"{where} {value} is negative, but xl numbers cannot be; "
                f"pass it as the string {str(value)!r}"
            )
        if value > _LONG_MAX:
            raise ValueError(
                f"{where} {value} does not fit in a C long, so xl cannot read it as a number; "
                "pass it as a string"
            )
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where} contains a NUL character, which xl cannot hold; remove it")
        return value
    if isinstance(value, (list, tuple)):
        return [_normalise(item, "an item of " + where) for item in value]
    raise ValueError(
        f"{where} has type {type(value).__name__}; xl values are strings, non-negative "
        "integers and lists of them"
    )


def _quote(value: str) -> str:
    return '"' + "".join(_ESCAPE_OUT.get(c, c) for c in value) + '"'


def format_value(value: Any) -> str:
    """`value` (str, int >= 0, bool, or a list/tuple of them) in xl syntax.

    Strings are double-quoted with backslash escapes for \\ " and control characters;
    lists of more than one item that do not fit on one line get one item per line, with
    a trailing comma.
    """
    return _format(_normalise(value), top=True)


def _format(value: XlValue, top: bool = False) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    items = [_format(item) for item in value]
    if not items:
        return "[ ]"
    one_line = "[ " + ", ".join(items) + " ]"
    if not top or len(items) == 1 or len(one_line) <= _ONE_LINE_LIST:
        return one_line
    return "[\n" + "".join(f"    {item},\n" for item in items) + "    ]"


class XlConfig:
    """An xl config file: exact text, the settings in it, and minimal edits.

    `XlConfig.parse(text)` (or `XlConfig(text)`) raises XlConfigError for anything xl
    would refuse. Pass text decoded with `errors="surrogateescape"` to keep arbitrary
    bytes: `render_bytes()` gives them back.
    """

    def __init__(self, text: Union[str, bytes] = "", source: Optional[str] = None) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "surrogateescape")
        if not isinstance(text, str):
            raise TypeError(f"XlConfig needs str or bytes, not {type(text).__name__}")
        self._source = source
        self._load(text)

    @classmethod
    def parse(cls, text: Union[str, bytes], source: Optional[str] = None) -> "XlConfig":
        """Parse `text`; raises XlConfigError (line, column, sentence) if xl would refuse it."""
        return cls(text, source)

    def _load(self, text: str) -> None:
        parser = _Parser(text, self._source)
        parser.parse()
        effective: Dict[str, Tuple[Any, str]] = {}
        for setting in parser.settings:
            value = setting.value
            if setting.op == "+=" and setting.name in effective:
                value = _concat(parser, setting, effective[setting.name][0], value)
            effective[setting.name] = (value, setting.op)
        self._text = text
        self._tokens = parser.tokens
        self._settings = parser.settings
        self._effective = effective

    # -- reading -------------------------------------------------------------------------

    def render(self) -> str:
        """The document's text: the parsed text itself, plus any edits."""
        return self._text

    def render_bytes(self) -> bytes:
        """The text encoded back to bytes (UTF-8, surrogate escapes restored)."""
        return self._text.encode("utf-8", "surrogateescape")

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"XlConfig({self._text!r})"

    def __contains__(self, key: object) -> bool:
        return key in self._effective

    def __iter__(self) -> Iterator[str]:
        return iter(self._effective)

    def keys(self) -> List[str]:
        """Setting names, in the order of their first assignment."""
        return list(self._effective)

    def get(self, key: str, default: Any = None) -> Any:
        """What xl reads for `key`: int, str or list (nested lists allowed), or `default`.

        A NUMBER is an int when xlu_cfg_get_long reads it whole (decimal, 0x hex, 0
        octal), else its text; a setting whose last assignment is `+=` is a str (xl
        refuses += for numbers). The last assignment wins; `+=` appends to the value
        before it.
        """
        if key not in self._effective:
            return default
        value, op = self._effective[key]
        return _python(value, appended=op == "+=")

    def as_dict(self) -> Dict[str, Any]:
        """Every setting, as `get` returns it."""
        return {key: self.get(key) for key in self._effective}

    def raw_values(self) -> Dict[str, Any]:
        """Every setting as libxlutil's getters return it: numbers as their text."""
        return {key: _raw(value) for key, (value, _op) in self._effective.items()}

    def lines(self, key: str) -> List[int]:
        """The line numbers where `key` is assigned."""
        return [_position(self._text, s.start)[0] for s in self._settings if s.name == key]

    # -- editing -------------------------------------------------------------------------

    def set(self, key: str, value: Any, after: Optional[str] = None) -> bool:
        """Make `key` mean `value`; returns whether the text changed.

        If `key` is set already, only the value text of its effective assignment (the
        last `=`) is replaced, and later `+=` assignments to it are removed; comments,
        blank lines and every other byte stay. Otherwise `key = value` is added on a new
        line after the line holding `after`'s last assignment, or at the end.
        """
        if not is_setting_name(key):
            raise ValueError(
                f"{key!r} is not an xl setting name; use lower-case letters, digits, '_' and '.', "
                "starting with a letter"
            )
        wanted = _normalise(value, f"the value for {key}")
        text = _format(wanted, top=True)
        if after is not None and not is_setting_name(after):
            raise ValueError(f"after={after!r} is not an xl setting name")
        if key in self._effective:
            if self.get(key) == wanted and _same_types(self.get(key), wanted):
                return False
            self._set_existing(key, wanted, text)
        else:
            self._insert(key, text, after)
        if self.get(key) != wanted or not _same_types(self.get(key), wanted):
            raise RuntimeError(
                f"internal error: setting {key} produced {self.get(key)!r}, not {wanted!r}"
            )
        return True

    def remove(self, key: str) -> bool:
        """Remove every assignment of `key` (with its line when it has one to itself)."""
        changed = False
        while True:
            mine = [s for s in self._settings if s.name == key]
            if not mine:
                return changed
            self._splice(*self._removal_span(mine[-1]), "")
            changed = True

    def _set_existing(self, key: str, wanted: XlValue, text: str) -> None:
        while True:
            mine = [s for s in self._settings if s.name == key]
            plain = [i for i, s in enumerate(mine) if s.op == "="]
            anchor = plain[-1] if plain else 0
            if anchor == len(mine) - 1:
                break
            self._splice(*self._removal_span(mine[-1]), "")
        setting = mine[anchor]
        if setting.op == "=" and isinstance(wanted, list):
            edited = self._edit_list(setting, wanted)
            if edited is not None:
                self._replace_text(edited)
                return
        new = self._text[: setting.value_start] + text + self._text[setting.value_end :]
        if setting.op == "+=":
            new = new[: setting.op_start] + "=" + new[setting.op_end :]
        self._replace_text(new)

    def _edit_list(self, setting: _Setting, wanted: List[Any]) -> Optional[str]:
        """The text with the list value of `setting` edited item by item, or None when
        the whole value is better rewritten.

        Only a list written over several lines can hold comments (a comment ends its
        line), so only such a list of plain items is edited in place: items that stay keep
        their text, a changed item gets new text where it stands, a removed item goes
        with its line when it has one to itself (its trailing comment included), and a
        new item gets a line of its own after the item it follows, indented like the
        others. Comment lines and blank lines between the items stay.
        """
        tokens = self._tokens
        if not isinstance(setting.value, list) or not wanted:
            return None
        if any(isinstance(item, list) for item in wanted):
            return None
        opening = next(i for i in range(setting.first, setting.last) if tokens[i].kind == "[")
        closing = setting.last
        inner = range(opening + 1, closing)
        if any(tokens[i].kind == "[" for i in inner):
            return None  # nested lists: not a list of plain items
        if not any(tokens[i].kind == "nl" for i in inner):
            return None  # one line: no comments to keep, so let the writer lay it out
        items = [i for i in inner if tokens[i].kind in ("string", "number")]
        if not items:
            return None
        text = self._text
        commas: Dict[int, int] = {}
        for index in items:
            j = self._skip(index + 1, ("ws", "nl"))
            if tokens[j].kind == ",":
                commas[index] = j

        def own_line(index: int) -> Optional[Tuple[int, int]]:
            """(line start, line end) when the item has its line to itself."""
            j = index - 1
            while tokens[j].kind == "ws":
                j -= 1
            if tokens[j].kind != "nl":
                return None
            k = self._skip(index + 1, ("ws",))
            if index in commas:
                if k != commas[index]:
                    return None  # its comma is on a later line
                k = self._skip(k + 1, ("ws",))
            if tokens[k].kind != "nl":
                return None
            return tokens[j].end, tokens[k].end

        indent = "    "
        for index in items:
            j = self._skip_back(index - 1, ("ws",))
            if tokens[j].kind == "nl":
                indent = text[tokens[j].end : tokens[index].start]
                break

        old = [_python(atom) for atom in setting.value]
        edits: List[Tuple[int, int, str]] = []

        def insert_after(position: int, values: List[Any]) -> None:
            new = [_format(value) for value in values]
            if position < 0:
                first = items[0]
                line = own_line(first)
                if line is not None:
                    edits.append((line[0], line[0], "".join(f"{indent}{t},\n" for t in new)))
                else:
                    start = tokens[first].start
                    edits.append((start, start, "".join(f"{t}, " for t in new)))
                return
            index = items[position]
            comma = "" if index in commas else ","
            line = own_line(index)
            if line is not None:
                if comma:
                    edits.append((tokens[index].end, tokens[index].end, comma))
                edits.append((line[1], line[1], "".join(f"{indent}{t},\n" for t in new)))
            else:
                after = tokens[commas[index]].end if index in commas else tokens[index].end
                edits.append((after, after, comma + "".join(f"\n{indent}{t}," for t in new)))

        def delete(position: int) -> None:
            index = items[position]
            line = own_line(index)
            if line is not None:
                edits.append((line[0], line[1], ""))
                return
            end = tokens[index].end
            if index in commas:
                end = tokens[self._skip(commas[index] + 1, ("ws",)) - 1].end
            edits.append((tokens[index].start, end, ""))

        keys = [(isinstance(v, str), v) for v in old]
        wanted_keys = [(isinstance(v, str), v) for v in wanted]
        matcher = difflib.SequenceMatcher(None, keys, wanted_keys, autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                continue
            paired = min(i2 - i1, j2 - j1)
            for k in range(paired):
                token = tokens[items[i1 + k]]
                edits.append((token.start, token.end, _format(wanted[j1 + k])))
            for k in range(i1 + paired, i2):
                delete(k)
            if j1 + paired < j2:
                insert_after(i1 + paired - 1, wanted[j1 + paired : j2])
        edits.sort(key=lambda e: (e[0], e[1]))
        if any(a[1] > b[0] for a, b in zip(edits, edits[1:])):
            return None  # a layout the rules above do not cover: rewrite the value
        # From the end backwards, so earlier offsets stay valid; at one offset a removal
        # goes first, then what is inserted there.
        for start, end, replacement in reversed(edits):
            text = text[:start] + replacement + text[end:]
        return text

    def _skip(self, index: int, kinds: Tuple[str, ...]) -> int:
        while index < len(self._tokens) and self._tokens[index].kind in kinds:
            index += 1
        return index

    def _skip_back(self, index: int, kinds: Tuple[str, ...]) -> int:
        while index >= 0 and self._tokens[index].kind in kinds:
            index -= 1
        return index

    def _insert(self, key: str, text: str, after: Optional[str]) -> None:
        line = f"{key} = {text}\n"
        pos = len(self._text)
        if after is not None and after in self._effective:
            anchor = [s for s in self._settings if s.name == after][-1]
            # The end of the line, skipping newlines inside lists of statements that
            # follow on the same line ("a = 1; b = [\n 2 ]").
            depth = 0
            for tok in self._tokens[anchor.last + 1 :]:
                depth += (tok.kind == "[") - (tok.kind == "]")
                if tok.kind == "nl" and depth == 0:
                    pos = tok.end
                    break
        if pos > 0 and self._text[pos - 1] != "\n":
            # Only the end of a file can lack its newline; it keeps lacking it.
            line = "\n" + line[:-1]
        self._splice(pos, pos, line)

    def _removal_span(self, setting: _Setting) -> Tuple[int, int]:
        tokens = self._tokens
        j = setting.first - 1
        while j >= 0 and tokens[j].kind == "ws":
            j -= 1
        k = setting.last + 1
        while k < len(tokens) and tokens[k].kind in ("ws", ";"):
            k += 1
        starts_line = j < 0 or tokens[j].kind == "nl"
        ends_line = k == len(tokens) or tokens[k].kind == "nl"
        if starts_line and ends_line:
            # The setting has its line(s) to itself: drop them, trailing comment included.
            line_start = tokens[j].end if j >= 0 else 0
            if k < len(tokens):
                return line_start, tokens[k].end
            if j >= 0 and self._text[tokens[j].start : tokens[j].end] == "\n":
                # The last line had no newline: the line before it loses its own, so the
                # file still ends without one (a comment's newline has to stay).
                line_start = tokens[j].start
            return line_start, len(self._text)
        k = setting.last + 1
        while k < len(tokens) and tokens[k].kind == "ws":
            k += 1
        if k < len(tokens) and tokens[k].kind == ";":
            # "a = 1; b = 2": drop "a = 1; ".
            end = k + 1
            while end < len(tokens) and tokens[end].kind == "ws":
                end += 1
            return setting.start, tokens[end - 1].end
        # "a = 1; b = 2" dropping b: drop " ; b = 2" (the ; before it ends a).
        while j > 0 and tokens[j - 1].kind == "ws":
            j -= 1
        return tokens[j].start, setting.value_end

    def _splice(self, start: int, end: int, replacement: str) -> None:
        self._replace_text(self._text[:start] + replacement + self._text[end:])

    def _replace_text(self, new: str) -> None:
        old = self._text
        try:
            self._load(new)
        except XlConfigError as exc:
            self._load(old)
            raise RuntimeError(
                f"internal error: an edit produced text xl would refuse: {exc}"
            ) from exc


def _same_types(a: Any, b: Any) -> bool:
    """Equal values of the same xl kinds (1 and "1" differ for xl's readers)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_types(x, y) for x, y in zip(a, b))
    return isinstance(a, str) == isinstance(b, str) and isinstance(a, list) == isinstance(b, list)
