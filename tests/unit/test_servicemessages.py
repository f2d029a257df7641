"""Service messages and the masker, with adversarial input."""

from __future__ import annotations

import base64

import pytest

from sandworker.daemon.servicemessages import MASK, Malformed, Masker, parse
from sandworker.daemon.ticketlog import LineFramer, escape


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_parse() -> None:
    msg = parse(f"##octopus[setVariable name='{b64('A b')}' value='{b64('é ü')}']".encode())
    assert (msg.name, msg.attrs) == ("setVariable", {"name": "A b", "value": "é ü"})
    assert parse(b"##octopus[stdout-verbose]").name == "stdout-verbose"
    for bad in (b"##octopus[", b"##octopus[x a='not base64!']", b"##octopus[x a='/w==']",
                b"##octopus[x a=unquoted]", b"##octopus[x] trailing"):  # fmt: skip
        with pytest.raises(Malformed):
            parse(bad)


@pytest.mark.parametrize(
    "secret",
    ['quote"and\\backslash', "tab\there", "ünïcödé ✓", "x" * 20_000, "<&'>", "y" * 70_000],
)
def test_a_secret_is_masked_in_its_escaped_form(secret: str) -> None:
    masker = Masker((secret,))
    framer = LineFramer(mask=masker)
    text = f"before {secret} after\n{secret}\n".encode()
    lines = []
    for at in range(0, len(text), 4093):  # in writes that split it anywhere
        lines += framer.feed(text[at : at + 4093])
    lines += framer.flush()
    masked = masker.mask(lines)
    assert masked == [b"before " + MASK + b" after", MASK], [m[:40] for m in masked]


def test_a_long_unfinished_line_is_cut_but_never_through_a_secret() -> None:
    secret = "z" * 5000
    masker = Masker((secret,))
    framer = LineFramer(limit=4096, mask=masker)
    lines = framer.feed(b"a" * 3000 + secret[:2500].encode())
    lines += framer.feed(secret[2500:].encode() + b"b" * 9000)
    lines += framer.flush()
    assert b"".join(lines) == b"a" * 3000 + MASK + b"b" * 9000
    assert all(len(line) <= 4096 for line in lines)
    assert b"z" not in b"".join(lines)


def test_multi_line_values_base64_and_the_longest_first() -> None:
    masker = Masker(("line-one\nline-two", "abc", "abcdef"))
    lines = escape([b"x line-one", b"line-two y", b"abcdef", b64("abc").encode()])
    assert masker.mask(lines) == [b"x " + MASK, MASK + b" y", MASK, MASK]
    assert Masker(("ab\ncd",)).mask([b"ab cd"]) == [b"ab cd"]  # pieces under 3 characters
    assert masker.mask_text("it was abcdef") == "it was ********"


def test_nothing_to_mask_is_cheap_and_unchanged() -> None:
    lines = [b"a", b"b"]
    assert Masker().mask(lines) is lines
    assert Masker(("zzz",)).mask(lines) is lines
