"""Merging debug configurations into a VS Code ``launch.json`` without disturbing the rest.

launch.json is "JSON with comments": it may hold ``//`` and ``/* */`` comments and trailing
commas, and people format it by hand. This module edits it through json-five's round-trip
model (``pip install json-five``, imported as ``json5``): the file is parsed into a tree
that keeps every comment, comma and blank, the entries amldbg owns are replaced or
appended in that tree, and the tree is written back. Everything else comes back byte for
byte. A file that does not parse is refused and left unchanged.

json-five is imported only when a file is written (``amldbg launch-config --write``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Sequence


class LaunchJsonError(Exception):
    """launch.json could not be updated; the message says why in one line, and the file is
    unchanged."""


@dataclasses.dataclass
class MergeResult:
    """What :func:`merge_into_file` did: which entry names were added or updated in place."""

    path: Path
    created: bool = False
    added: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)


def new_document(configurations: Sequence[dict[str, Any]], compounds: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A complete launch.json document holding ``configurations`` (and ``compounds``)."""
    document: dict[str, Any] = {"version": "0.2.0", "configurations": list(configurations)}
    if compounds:
        document["compounds"] = list(compounds)
    return document


def _json5() -> Any:
    try:
        import json5
        from json5.loader import ModelLoader  # noqa: F401  (json-five, not the "json5" package)
    except ImportError:
        raise LaunchJsonError(
            "writing launch.json needs json-five: pip install 'amldbg[cli]' (or json-five; "
            "the unrelated 'json5' package, if installed, takes the same import name)"
        ) from None
    return json5


def _last_line_indent(parts: Sequence[Any]) -> str | None:
    """The indentation after the last line break in a node's whitespace, if there is one."""
    text = "".join(part for part in parts if isinstance(part, str))
    if "\n" not in text:
        return None
    tail = text.rsplit("\n", 1)[1]
    return tail if tail.strip(" \t") == "" else None


def _indent_unit(text: str) -> str:
    """The file's indentation step: a tab, or the smallest indentation of any line."""
    widths = []
    for line in text.splitlines():
        stripped = line.lstrip(" \t")
        if not stripped or line == stripped:
            continue
        lead = line[: len(line) - len(stripped)]
        if lead.startswith("\t"):
            return "\t"
        widths.append(len(lead))
    return " " * min(widths) if widths else "    "


class _Editor:
    """Edits one parsed launch.json model in place."""

    def __init__(self, json5: Any, text: str) -> None:
        from json5 import model

        self.json5 = json5
        self.model = model
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self.unit = _indent_unit(text)

    def _parse(self, value: Any, indent: str) -> Any:
        from json5.loader import ModelLoader

        rendered = json.dumps(value, indent=self.unit)
        # Continuation lines start at the indentation of the place the value goes.
        rendered = rendered.replace("\n", self.newline + indent)
        return self.json5.loads(rendered, loader=ModelLoader()).value

    def _key_name(self, key: Any) -> str | None:
        if isinstance(key, self.model.Identifier):
            return str(key.name)
        if isinstance(key, self.model.String):
            return str(key.characters)
        return None

    def _string_value(self, node: Any) -> str | None:
        return str(node.characters) if isinstance(node, self.model.String) else None

    def member(self, obj: Any, name: str) -> Any:
        """The value node of ``obj[name]``, or ``None``."""
        for key, value in zip(obj.keys, obj.values):
            if self._key_name(key) == name:
                return value
        return None

    def member_indent(self, obj: Any, parent_indent: str) -> str:
        """How ``obj``'s members are indented (its first key's indentation)."""
        if obj.keys:
            first = obj.keys[0]
            indent = _last_line_indent(list(obj.leading_wsc) + list(first.wsc_before))
            if indent is not None:
                return indent
        return parent_indent + self.unit

    def add_member(self, obj: Any, name: str, value: Any, parent_indent: str) -> Any:
        """Append ``"name": value`` to object ``obj``; returns the new value node."""
        indent = self.member_indent(obj, parent_indent)
        key = self.model.DoubleQuotedString(name, raw_value=json.dumps(name))
        node = self._parse(value, indent)
        key.wsc_before = [self.newline + indent]
        node.wsc_before = [" "]
        if obj.values:
            last = obj.values[-1]
            # Whatever stood between the last member and "}" now follows the new member.
            node.wsc_after, last.wsc_after = list(last.wsc_after), []
        else:
            obj.leading_wsc = []
            node.wsc_after = [self.newline + parent_indent]
        obj.keys.append(key)
        obj.values.append(node)
        return node

    def element_indent(self, array: Any, parent_indent: str) -> str:
        """How ``array``'s elements are indented (its last element's indentation)."""
        for index in range(len(array.values) - 1, -1, -1):
            before = list(array.values[index].wsc_before)
            if index == 0:
                before = list(array.leading_wsc) + before
            indent = _last_line_indent(before)
            if indent is not None:
                return indent
        return parent_indent + self.unit

    def upsert(self, array: Any, entry: dict[str, Any], parent_indent: str) -> str:
        """Replace the element of ``array`` named like ``entry``, or append it.

        Returns ``"updated"`` or ``"added"``. A replaced element keeps the comments and
        blanks around it; its own content is the new entry.
        """
        indent = self.element_indent(array, parent_indent)
        for index, element in enumerate(array.values):
            if not isinstance(element, self.model.JSONObject):
                continue
            name = self.member(element, "name")
            if name is not None and self._string_value(name) == entry["name"]:
                node = self._parse(entry, indent)
                node.wsc_before = list(element.wsc_before)
                node.wsc_after = list(element.wsc_after)
                array.values[index] = node
                return "updated"
        node = self._parse(entry, indent)
        node.wsc_before = [self.newline + indent]
        if array.values:
            last = array.values[-1]
            # Whatever stood between the last element and "]" now follows the new one.
            node.wsc_after, last.wsc_after = list(last.wsc_after), []
        else:
            comments = [part for part in array.leading_wsc if not isinstance(part, str)]
            if not comments:
                array.leading_wsc = []
            node.wsc_after = [self.newline + parent_indent]
        array.values.append(node)
        return "added"


def merge_text(
    text: str,
    configurations: Sequence[dict[str, Any]],
    compounds: Sequence[dict[str, Any]] = (),
    source: str = "launch.json",
) -> tuple[str, list[str], list[str]]:
    """Merge entries into launch.json text; returns ``(new_text, added, updated)``.

    Raises :class:`LaunchJsonError` when ``text`` does not parse or is not a launch.json
    (an object whose ``configurations``/``compounds`` are arrays).
    """
    json5 = _json5()
    from json5.dumper import ModelDumper
    from json5.loader import ModelLoader

    try:
        document = json5.loads(text, loader=ModelLoader())
    except Exception as error:  # parsing: json5 raises assorted types for a bad document
        detail = " ".join(str(error).split())
        raise LaunchJsonError(f"cannot parse {source}: {detail}") from None
    editor = _Editor(json5, text)
    root = document.value
    if not isinstance(root, editor.model.JSONObject):
        raise LaunchJsonError(f"{source} is not a launch.json: its top level is not an object")
    added: list[str] = []
    updated: list[str] = []
    for key, entries in (("configurations", configurations), ("compounds", compounds)):
        if not entries:
            continue
        array = editor.member(root, key)
        if array is None:
            editor.add_member(root, key, list(entries), "")
            added.extend(entry["name"] for entry in entries)
            continue
        if not isinstance(array, editor.model.JSONArray):
            raise LaunchJsonError(f"{source} is not a launch.json: {key!r} is not an array")
        parent = editor.member_indent(root, "")
        for entry in entries:
            outcome = editor.upsert(array, entry, parent)
            (added if outcome == "added" else updated).append(entry["name"])
    merged = json5.dumps(document, dumper=ModelDumper())
    # A last guard: what is written must read back as JSON with comments.
    try:
        json5.loads(merged)
    except Exception as error:  # pragma: no cover - would be a bug in the edit above
        raise LaunchJsonError(f"refusing to write {source}: the merge produced invalid JSON ({error})") from None
    return merged, added, updated


def _umask() -> int:
    # The process's umask can only be read by setting it; a CLI command is single-threaded.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomically(path: Path, text: str, like: os.stat_result | None = None) -> None:
    """Write ``text`` to ``path`` through a sibling file renamed over it.

    An interrupted write never leaves a half-written launch.json behind. The new file gets
    ``like``'s permission bits (and, where allowed, its owner), or the umask's default for a
    file that did not exist.
    """
    directory = path.parent
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if like is not None:
            if hasattr(os, "chown") and (like.st_uid, like.st_gid) != _owner(temporary):
                # Only root may give a file away; the mode is what matters most.
                with contextlib.suppress(OSError):
                    os.chown(temporary, like.st_uid, like.st_gid)
            os.chmod(temporary, stat.S_IMODE(like.st_mode))
        else:
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:  # whatever stopped the write, remove the temporary file; re-raised
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _owner(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_uid, info.st_gid


def merge_into_file(
    path: str | os.PathLike[str],
    configurations: Sequence[dict[str, Any]],
    compounds: Sequence[dict[str, Any]] = (),
) -> MergeResult:
    """Merge ``configurations`` (and ``compounds``) into the launch.json at ``path``.

    A missing file (and its folder) is created. In an existing file an entry whose
    ``name`` matches is replaced where it stands; other entries are appended; every other
    entry, comment, trailing comma and blank is kept. The file is replaced atomically and
    keeps its permission bits; a symbolic link stays a link (the file it points to is
    written). Raises :class:`LaunchJsonError`, with the file unchanged, when it cannot be
    read, parsed or written, or is read-only.
    """
    target = Path(path)
    names = [entry.get("name") for entry in (*configurations, *compounds)]
    if any(not isinstance(name, str) or not name for name in names):
        raise LaunchJsonError("every launch.json entry needs a non-empty name")
    result = MergeResult(path=target)
    # Through a symlinked launch.json (dotfiles repositories do this) to the real file, so
    # that the rename replaces the file and not the link.
    real = Path(os.path.realpath(target))
    try:
        info: os.stat_result | None = real.stat()
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise LaunchJsonError(f"cannot read {target}: {error.strerror or error}") from None
    if info is None:
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(new_document(configurations, compounds), indent=4) + "\n"
            _write_atomically(real, text)
        except OSError as error:
            raise LaunchJsonError(f"cannot create {target}: {error.strerror or error}") from None
        result.created = True
        result.added = [str(name) for name in names]
        return result
    if not stat.S_ISREG(info.st_mode):
        raise LaunchJsonError(f"cannot write {target}: it is not a regular file")
    if not info.st_mode & 0o222 or not os.access(real, os.W_OK):
        # Root may write anything, so the mode bits are checked too: a read-only
        # launch.json was made so on purpose.
        raise LaunchJsonError(f"cannot write {target}: it is read-only")
    try:
        raw = real.read_bytes()
    except OSError as error:
        raise LaunchJsonError(f"cannot read {target}: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LaunchJsonError(f"cannot parse {target}: it is not UTF-8 text") from None
    if not text.strip():
        # VS Code treats an empty launch.json as absent; so does amldbg.
        text = "{}\n"
    merged, result.added, result.updated = merge_text(text, configurations, compounds, str(target))
    if merged != text:
        try:
            _write_atomically(real, merged, like=info)
        except OSError as error:
            raise LaunchJsonError(f"cannot write {target}: {error.strerror or error}") from None
    return result
