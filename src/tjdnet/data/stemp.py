"""``stemp``: synthetic Celsius-to-Fahrenheit questions, generated offline and deterministically.

Reproduces the original generator: C = int(gauss(mu, 2)) (truncated toward zero) clipped to [-40, 80], with
mu = 20 for training and for eval/test under the ``in`` shift, 25 under ``mild`` and 30 under ``hard``;
F = C * 9 / 5 + 32 printed as a Python float (``68.0``). Unlike the original, which drew from the global RNG,
each split draws from its own ``random.Random`` seeded from (seed, split), so a split never depends on which
other splits were generated, or in which order.
"""

import random

from tjdnet.data.examples import Example

SPLIT_SIZES = {"train": 10_000, "eval": 100, "test": 100}
SHIFT_MEANS = {"in": 20.0, "mild": 25.0, "hard": 30.0}
STDDEV = 2.0
CELSIUS_RANGE = (-40, 80)

QUESTION = "What is {c}°C in Fahrenheit?"
ANSWER = (
    "\nLet's solve this step by step:\n"
    "1) To convert Celsius to Fahrenheit, use the formula: °F = (°C x 9/5) + 32\n"
    "2) Plugging in {c}°C:\n"
    "   °F = ({c} x 9/5) + 32\n"
    "   °F = {f}\n"
    "\n####\n{f}"
)


def stemp_example(celsius: int) -> Example:
    fahrenheit = (celsius * 9 / 5) + 32
    return Example(QUESTION.format(c=celsius), ANSWER.format(c=celsius, f=fahrenheit))


def load_stemp(split: str, num_samples: int | None = None, seed: int = 0, domain_shift: str = "in") -> list[Example]:
    """``num_samples`` examples (default: 10,000 train, 100 eval, 100 test) of one split.

    ``domain_shift`` moves the eval and test temperatures; training data is always drawn around 20 °C.
    A smaller ``num_samples`` gives a prefix of the default-size split.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"stemp has no split {split!r}; allowed: {', '.join(SPLIT_SIZES)}")
    if domain_shift not in SHIFT_MEANS:
        raise ValueError(f"domain_shift={domain_shift!r}; allowed: {', '.join(SHIFT_MEANS)}")
    mean = SHIFT_MEANS["in" if split == "train" else domain_shift]
    # A string seed is hashed with SHA-512 by random.Random, so it is stable across runs and PYTHONHASHSEED.
    rng = random.Random(f"stemp/{split}/{seed}")
    low, high = CELSIUS_RANGE
    count = SPLIT_SIZES[split] if num_samples is None else num_samples
    return [stemp_example(min(max(int(rng.gauss(mean, STDDEV)), low), high)) for _ in range(count)]
