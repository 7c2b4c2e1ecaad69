"""Masking secrets before amldbg writes anything: one set of rules for every file and line.

Two kinds of rule, both deliberately broad (hiding a harmless value costs little, writing a
key costs a rotation):

* by name (:func:`is_secret_name`): a variable called ``*KEY*``, ``*TOKEN*``, ``*SECRET*``,
  ``*PASSWORD*``, ``*PASSPHRASE*``, ``*CREDENTIAL*``, ``*_PWD``, ``*_PASS``, ``*_PAT``, a
  connection string, a SAS... holds a secret whatever its value looks like: the whole value
  is replaced by :data:`MASK`;
* by value shape (:func:`mask_value`): the parts of any text that look like credentials are
  replaced by :data:`MASK` and the rest is kept, so that a masked URL still says which host
  it names: the user info of a URL (``https://TOKEN@host``, ``https://user:pa/ss@host``),
  JWTs, ``Bearer``/``Basic`` credentials, SAS signatures (``sig=``), the secret segments of
  connection strings (``AccountKey=``, ``SharedAccessKey=``, ``SharedAccessSignature=``,
  ``Password=``, ``Authorization=``, ``InstrumentationKey=``...), GitHub tokens, and long
  base64 keys.

Masked text never gains a quote, a backslash or a line break, so masking a JSON document's
text or a log line keeps it well-formed. Only the standard library is used.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

#: What a secret is replaced with.
MASK = "<hidden>"

# Names: any of these words anywhere (KEY catches AZUREML_ACCOUNT_KEY1, *STORAGEKEY, APIKEY;
# KEYRING and TOKENIZERS name no secret), or these endings (PWD alone is the working
# directory, PATH is not a PAT).
_SECRET_NAME = re.compile(
    r"KEY(?!RING|BOARD)|TOKEN(?!IZER)|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|"
    r"COOKIE|SIGNATURE|CONNECTION_?STRING|CONN_?STR|JWT|BEARER|"
    r"(?:^|_)(?:SAS|AUTH|AUTHORIZATION)(?:_|$)|"
    r"_(?:PWD|PASS|PAT)(?:_|$|\d)",
    re.IGNORECASE,
)

# Characters a masked value may consist of: never whitespace, quotes, backslashes or angle
# brackets, so that a mask stops at the end of a JSON string or a quoted word.
_VALUE = r"[^\s\"'\\<>]"

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # URL user info with a password: from "scheme://user:" to the last "@" of the word, so
    # that a password holding "/" or "@" is hidden whole.
    (
        re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]{0,30}://)[^/?#@:\s\"'\\<>]*:" + _VALUE + r"+@"),
        r"\1" + MASK + "@",
    ),
    # URL user info without a password (a token, https://TOKEN@host); a "/" before the "@"
    # means a path (git+https://host/repo@v1.0), which stays.
    (
        re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]{0,30}://)[^/?#@:\s\"'\\<>]+@"),
        r"\1" + MASK + "@",
    ),
    # Secret segments of connection strings and query strings: "Name=value" up to ";" or "&"
    # (or the end of the word). SharedAccessSignature values hold "&", so they run to ";".
    (
        re.compile(r"(\bSharedAccessSignature\s*=\s*)[^;\s\"'\\<>]+", re.IGNORECASE),
        r"\1" + MASK,
    ),
    (
        re.compile(
            r"(\b(?:AccountKey|SharedAccessKey|SharedAccessKeyValue|InstrumentationKey|"
            r"Authorization|Password|Pwd|AccessKey|ApiKey|api_key|access_token|id_token|"
            r"refresh_token|client_secret|token|sig|secret)\s*=\s*)"
            # Authorization=ikey / Authorization=AAD name a mechanism, not a credential.
            r"(?!(?:ikey|aad)(?:[;&\s\"'\\<>]|$))(?![rRbBuUfF]{1,2}[\"'])[^;&\s\"'\\<>]+",
            re.IGNORECASE,
        ),
        r"\1" + MASK,
    ),
    # HTTP credentials ("Authorization: Bearer eyJ...", "Basic dXNlcjpwYXNz").
    (re.compile(r"(\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE), r"\1" + MASK),
    # JWTs: base64url header "eyJ..." "." payload ["." signature].
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)?"), MASK),
    # GitHub tokens (classic and fine-grained).
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"), MASK),
)

# Long base64 runs (storage account keys are 88 characters): judged one by one, see _base64.
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{32,}={0,2}(?![A-Za-z0-9+/=])")


def _base64(found: re.Match[str]) -> str:
    text = found.group(0)
    body = text.rstrip("=")
    # A key mixes upper case, lower case and digits and has few "/"; a path, a git hash
    # (lower-case hex) or a word does not.
    if (
        text.startswith("/")
        or "//" in text
        or body.count("/") * 10 > len(body)
        or not any(c.isupper() for c in body)
        or not any(c.islower() for c in body)
        or not any(c.isdigit() for c in body)
    ):
        return text
    return MASK


# A quoted value given a name: ``api_key="..."``, ``token='...'``, ``"password": "..."``,
# ``os.environ["HF_TOKEN"] = "..."``, ``api_key: str = "..."``, with string prefixes
# (``f"..."``, ``rb'...'``) and triple quotes (source lines, reprs of dicts and calls). The
# value is hidden when the name is a secret's (:func:`is_secret_name`); quotes and escapes
# inside the value are honoured. An unquoted name before ":" is prose ("KeyError: 'k'").
_NAMED_QUOTED = re.compile(
    r"""(?:(?P<q>['"])(?P<quoted>[A-Za-z_][A-Za-z0-9_.-]{0,80})(?P=q)\]?\s*[:=]|"""
    r"""(?P<name>\b[A-Za-z_][A-Za-z0-9_.-]{0,80})(?:\s*:\s*[A-Za-z_][\w.\[\], ]{0,40}?)?\s*=)\s*"""
    r"""(?P<prefix>[rRbBuUfF]{0,2})"""
    r"""(?P<value>'{3}(?:[^\\]|\\.){0,4096}?'{3}|"{3}(?:[^\\]|\\.){0,4096}?"{3}|"""
    r"""'(?:[^'\\\n]|\\.){0,4096}'|"(?:[^"\\\n]|\\.){0,4096}")"""
)
# An unquoted value given a secret's name, as command lines and environments write it:
# ``HF_TOKEN=hf_...``, ``db.secret_key=...`` (Hydra), ``--api_key=...``: no space around "=".
_NAMED_BARE = re.compile(
    r"""(?P<name>(?<![\w.-])[A-Za-z_][A-Za-z0-9_.-]{0,80})=(?!['"<])(?![(\[{])(?!(?i:ikey|aad)\b)(?![rRbBuUfF]{1,2}['"])"""
    r"""(?P<value>[^\s'"\\<>;&,)\]}]{1,4096})"""
)


# A name that labels a secret rather than holding one: SharedAccessKeyName=, token_type=,
# api_key_file=, KEY_ID=.
_LABEL = re.compile(r"(?:name|id|file|path|dir|type|url|uri|length|size|count|env|var)$", re.IGNORECASE)


def _names_a_secret(name: str) -> bool:
    return is_secret_name(name) and not _LABEL.search(name)


def _named_quoted(found: re.Match[str]) -> str:
    value = found.group("value")
    name = found.group("quoted") or found.group("name") or ""
    quote = 3 if value[:3] in ("'''", '"""') and len(value) >= 6 else 1
    if len(value) <= 2 * quote or not _names_a_secret(name) or value[quote:-quote] == MASK:
        return found.group(0)
    head = found.group(0)[: found.start("value") - found.start(0)]
    return head + value[:quote] + MASK + value[-quote:]


def _named_bare(found: re.Match[str]) -> str:
    if not _names_a_secret(found.group("name")) or found.group("value") == MASK:
        return found.group(0)
    return found.group("name") + "=" + MASK


def is_secret_name(name: str) -> bool:
    """True when a variable's name says its value is a secret (key, token, password...)."""
    return bool(_SECRET_NAME.search(str(name)))


def mask_value(text: str) -> str:
    """``text`` with every part that looks like a credential replaced by :data:`MASK`.

    The rest is kept: ``https://TOKEN@host/simple`` becomes ``https://<hidden>@host/simple``,
    ``DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k==`` keeps its account name.
    """
    value = str(text)
    if "=" in value or ":" in value:
        value = _NAMED_QUOTED.sub(_named_quoted, value)
    for pattern, replacement in _RULES:
        value = pattern.sub(replacement, value)
    if "=" in value:  # after the connection-string rules, which know where their values end
        value = _NAMED_BARE.sub(_named_bare, value)
    return _BASE64.sub(_base64, value)


def mask_env(env: Mapping[str, Any]) -> dict[str, str]:
    """A copy of an environment mapping that is safe to write.

    A secret-looking name (:func:`is_secret_name`) gets :data:`MASK` as its whole value;
    every other value is passed through :func:`mask_value`.
    """
    return {
        str(name): MASK if is_secret_name(str(name)) else mask_value(str(value))
        for name, value in env.items()
    }


def mask_tree(data: Any) -> Any:
    """A copy of a JSON-like structure with :func:`mask_value` applied to every string
    (keys included), and :data:`MASK` for the value of every secret-looking key."""
    if isinstance(data, str):
        return mask_value(data)
    if isinstance(data, Mapping):
        return {
            mask_value(str(key)): (
                MASK if is_secret_name(str(key)) and isinstance(value, str) else mask_tree(value)
            )
            for key, value in data.items()
        }
    if isinstance(data, (list, tuple)):
        return [mask_tree(item) for item in data]
    return data


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` readable by its owner only (mode 0600).

    The file is created with mode 0600 from the start (never widened and narrowed later), and
    an existing regular file is narrowed to 0600 before anything is written into it. Raises
    ``OSError``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(os.fspath(path), flags, 0o600)
    try:
        import stat

        if stat.S_ISREG(os.fstat(descriptor).st_mode) and hasattr(os, "fchmod"):
            os.fchmod(descriptor, 0o600)
    except OSError:
        os.close(descriptor)
        raise
    with open(descriptor, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
