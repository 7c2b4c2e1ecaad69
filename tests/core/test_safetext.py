"""amldbg.core.safetext: the one text-safety rule every writer and reader calls."""

from __future__ import annotations

import pytest

from amldbg.core import safetext


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text", "plain text"),
        ("tab\tnew\nline\rcr", "tab\\x09new\\x0aline\\x0dcr"),
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
        ("next\x85line", "next\\x85line"),
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("\u202eevil\u2066x\u2069", "\\u202eevil\\u2066x\\u2069"),
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("café ✓", "café ✓"),
    ],
)
def test_escape_makes_one_safe_line(raw: str, shown: str) -> None:
    assert safetext.escape(raw) == shown


def test_escape_never_runs_a_str_subclass_str() -> None:
    class Loud(str):
        def __str__(self) -> str:
            raise AssertionError("ran")

    assert safetext.escape(Loud("quiet\n")) == "quiet\\x0a"


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ('connect(api_key="sk-live-123")', 'connect(api_key="<hidden>")'),
        ("Namespace(hf_token='hf_abc', lr=0.1)", "Namespace(hf_token='<hidden>', lr=0.1)"),
        ("{'password': 'p\\'w', 'user': 'me'}", "{'password': '<hidden>', 'user': 'me'}"),
        ('{"client_secret": "abc"}', '{"client_secret": "<hidden>"}'),
        ("KeyError: 'k'", "KeyError: 'k'"),
        ('name="bob"', 'name="bob"'),
        ('token=""', 'token=""'),
    ],
)
def test_mask_hides_named_quoted_values(raw: str, masked: str) -> None:
    assert safetext.mask(raw) == masked


def test_safe_masks_before_it_cuts() -> None:
    url = "https://user:" + "p" * 500 + "@host.example/x"
    assert safetext.safe(url, 40) == "https://<hidden>@host.example/x"
    assert "p" * 10 not in safetext.safe("x " + url, 20)


def test_shorten_never_splits_an_escape() -> None:
    text = safetext.escape("abcdefg\u202e" + "z" * 50)
    for limit in range(4, 30):
        cut = safetext.shorten(text, limit)
        assert len(cut) <= limit
        body = cut[:-3] if cut.endswith("...") else cut
        assert not body.endswith(("\\", "\\u", "\\u2", "\\u20", "\\u202"))


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ('os.environ["HF_TOKEN"] = "hunter2"', 'os.environ["HF_TOKEN"] = "<hidden>"'),
        ('config["password"] = "hunter2"', 'config["password"] = "<hidden>"'),
        ('api_key: str = "hunter2"', 'api_key: str = "<hidden>"'),
        ('client = OpenAI(api_key=f"hunter2")', 'client = OpenAI(api_key=f"<hidden>")'),
        ('token = b"hunter2"', 'token = b"<hidden>"'),
        ('PASSWORD = """hunter2"""', 'PASSWORD = """<hidden>"""'),
        ("HF_TOKEN=hunter2 python train.py", "HF_TOKEN=<hidden> python train.py"),
        ("export OPENAI_API_KEY=hunter2", "export OPENAI_API_KEY=<hidden>"),
        ("SharedAccessKeyName=Root", "SharedAccessKeyName=Root"),
        ("token_type=refresh max_tokens=5", "token_type=refresh max_tokens=<hidden>"),
    ],
)
def test_mask_hides_what_source_lines_and_command_lines_give_a_secret_name(raw: str, masked: str) -> None:
    assert safetext.mask(raw) == masked


def test_safe_bounds_the_text_it_masks() -> None:
    line = "x = 1; " * 200_000 + 'api_key="k"'
    assert safetext.safe(line, 50).endswith("...")
