import re
import statistics

import pytest

from tjdnet.data.answers import parse_answer
from tjdnet.data.stemp import SPLIT_SIZES, load_stemp, stemp_example


def test_exact_template():
    example = stemp_example(20)
    assert example.question == "What is 20°C in Fahrenheit?"
    assert example.answer == (
        "\nLet's solve this step by step:\n"
        "1) To convert Celsius to Fahrenheit, use the formula: °F = (°C x 9/5) + 32\n"
        "2) Plugging in 20°C:\n"
        "   °F = (20 x 9/5) + 32\n"
        "   °F = 68.0\n"
        "\n####\n68.0"
    )
    assert stemp_example(21).answer.endswith("####\n69.8")
    assert stemp_example(-38).answer.endswith("####\n-36.400000000000006")  # Python float repr, as the original


def test_same_seed_same_data_and_splits_differ():
    assert load_stemp("test", seed=3) == load_stemp("test", seed=3)
    assert load_stemp("test", seed=3) != load_stemp("test", seed=4)
    assert load_stemp("eval") != load_stemp("test")
    assert load_stemp("train", num_samples=50) == load_stemp("train")[:50]


def test_default_sizes():
    assert {split: len(load_stemp(split)) for split in SPLIT_SIZES} == {"train": 10_000, "eval": 100, "test": 100}


@pytest.mark.parametrize(("shift", "mean"), [("in", 20), ("mild", 25), ("hard", 30)])
def test_temperature_distribution(shift, mean):
    examples = load_stemp("test", num_samples=5000, domain_shift=shift)
    celsius = [int(re.search(r"-?\d+", e.question).group()) for e in examples]
    # int() truncates toward zero, so the mean sits about half a degree below mu.
    assert mean - 1.0 < statistics.mean(celsius) < mean
    assert 1.5 < statistics.stdev(celsius) < 2.5
    assert [parse_answer(e.answer) for e in examples] == [c * 9 / 5 + 32 for c in celsius]


def test_training_data_ignores_the_shift():
    assert load_stemp("train", num_samples=20, domain_shift="hard") == load_stemp("train", num_samples=20)


def test_bad_split_and_shift():
    with pytest.raises(ValueError, match="allowed: train, eval, test"):
        load_stemp("validation")
    with pytest.raises(ValueError, match="allowed: in, mild, hard"):
        load_stemp("test", domain_shift="extreme")
