"""The inline flag parser (cogs.utils.flags): a pure function, so every odd input is checked directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cogs.utils.flags import Choices, FlagError, parse_flags
from jobrequest import ASPECTS


def test_all_flags() -> None:
    parsed = parse_flags("a cat on a mat --ar 16:9 --seed 42 --no text, blur --steps 30 --guidance 4.5 --count 2")
    assert parsed == Choices(
        prompt="a cat on a mat", aspect="16:9", seed=42, negative_prompt="text, blur", steps=30, guidance=4.5, count=2
    )


def test_no_flags_and_lookalikes() -> None:
    assert parse_flags("  a well--known  cat ") == Choices(prompt="a well--known  cat")
    assert parse_flags("a cat --AR 1:1 —seed 3 --cfg 2").aspect == "1:1"  # case, em dash, alias
    assert parse_flags("a cat —seed 3").seed == 3
    assert parse_flags("a cat --cfg 2").guidance == 2.0
    assert parse_flags("a cat --aspect 9:16").aspect == "9:16"
    assert parse_flags("--seed 5").prompt == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a cat --steps abc", "--steps needs a whole number, e.g. --steps 30 (got “abc”)"),
        ("a cat --steps 2.5", "--steps needs a whole number"),
        ("a cat --guidance lots", "--guidance needs a number"),
        ("a cat --guidance nan", "finite number"),
        ("a cat --ar 5:7", "--ar 5:7 isn't supported: use one of 1:1, 16:9"),
        ("a cat --ar", "--ar needs a value, e.g. --ar 16:9"),
        ("a cat --no", "--no needs a value"),
        ("a cat --quality 2", "Unknown flag --quality"),
        ("a cat --seed 1 --seed 2", "--seed is given twice"),
        ("a cat --ar 16:9 at night", "--ar takes one value"),
    ],
)
def test_malformed_flags_say_what_to_type(text: str, message: str) -> None:
    with pytest.raises(FlagError) as caught:
        parse_flags(text)
    assert message in str(caught.value)


@given(st.text(max_size=200))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        parsed = parse_flags(text)
    except FlagError as exc:
        assert str(exc)
        return
    assert parsed.prompt == parsed.prompt.strip()
    assert parsed.aspect is None or parsed.aspect in ASPECTS
    assert "--" not in text or parsed.prompt in text


@given(
    st.text(alphabet=st.characters(blacklist_characters="-—", blacklist_categories=("Cs",)), min_size=1, max_size=80),
    st.sampled_from(list(ASPECTS)),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_flags_round_trip(prompt: str, aspect: str, seed: int) -> None:
    parsed = parse_flags(f"{prompt} --ar {aspect} --seed {seed}")
    assert (parsed.prompt, parsed.aspect, parsed.seed) == (prompt.strip(), aspect, seed)
