"""Reading the final numeric answer out of generated text, and scoring it.

Answers end in ``#### N`` (GSM8K) or ``####\\nN`` (stemp); the number is read from the first non-empty line
after the last ``####``, so a model that goes on to write another question after its answer is still scored on
the answer.
"""

import math
import re

# Optional sign (ASCII or Unicode minus), optional currency sign, digits with optional thousands commas,
# optional decimals; or a bare decimal like ".5".
_NUMBER = re.compile(r"([-\u2212]?)\$?(\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)")

# Two answers are equal when they differ by less than this, relative to the reference (absolute below 1).
TOLERANCE = 1e-6


def parse_answer(text: str) -> float:
    """The number after the last ``####`` in ``text``, or NaN when there is no ``####`` or no number after it.

    Accepts ``1,234``, ``-5``, ``0.5``, ``$18``, ``68.0 °F``, ``18 dollars``.
    """
    if "####" not in text:
        return math.nan
    tail = text.rsplit("####", 1)[1]
    first_line = next((line for line in tail.splitlines() if line.strip()), "")
    match = _NUMBER.search(first_line)
    if match is None:
        return math.nan
    sign, digits = match.groups()
    value = float(digits.replace(",", ""))
    return -value if sign else value


def is_correct(pred_text: str, answer_text: str) -> bool:
    """Whether the prediction's final number equals the reference's; a NaN on either side counts as wrong."""
    pred, ref = parse_answer(pred_text), parse_answer(answer_text)
    if math.isnan(pred) or math.isnan(ref):
        return False
    return abs(pred - ref) <= TOLERANCE * max(1.0, abs(ref))
