import math

import pytest

from tjdnet.data.answers import is_correct, parse_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 72 clips.\n#### 72", 72.0),
        ("####\n68.0", 68.0),
        ("#### 1,234", 1234.0),
        ("#### 1,234,567.5", 1234567.5),
        ("#### -5", -5.0),
        ("#### \u22123", -3.0),
        ("#### 0.25", 0.25),
        ("#### .5", 0.5),
        ("#### $18", 18.0),
        ("#### -$7.50", -7.5),
        ("####\n68.0 °F", 68.0),
        ("#### 18 dollars", 18.0),
        ("#### 10.", 10.0),
        ("#### 3 #### 4", 4.0),  # the last #### wins
        ("####\n\n  42\n[QUESTION]\nWhat is 21°C in Fahrenheit?", 42.0),  # text after the answer is ignored
    ],
)
def test_parse_answer_reads_the_number_after_the_last_marker(text, expected):
    assert parse_answer(text) == expected


@pytest.mark.parametrize("text", ["The answer is 72", "#### ", "####\nno idea", "####\n[QUESTION]\nWhat is 20°C?", ""])
def test_parse_answer_without_a_number_is_nan(text):
    assert math.isnan(parse_answer(text))


def test_is_correct_compares_numerically():
    assert is_correct("#### 1,000", "work...\n#### 1000")
    assert is_correct("####\n69.8", "####\n69.8")
    assert is_correct("#### 0.30000000000000004", "#### 0.3")
    assert not is_correct("#### 69.9", "#### 69.8")
    assert not is_correct("#### -5", "#### 5")


def test_nan_counts_wrong():
    assert not is_correct("I don't know", "#### 5")
    assert not is_correct("#### 5", "no reference")
    assert not is_correct("no answer", "no reference")
