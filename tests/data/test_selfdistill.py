import pytest

from tjdnet.data.examples import Example
from tjdnet.distill import self_distill

EXAMPLES = [Example(f"q{i}", f"reference {i}") for i in range(5)]


class Generator:
    def __init__(self, fail_after_calls: int | None = None):
        self.calls = []
        self.fail_after_calls = fail_after_calls

    def __call__(self, prompts):
        if self.fail_after_calls is not None and len(self.calls) == self.fail_after_calls:
            raise RuntimeError("out of memory")
        self.calls.append(list(prompts))
        return [f"model says {p}" for p in prompts]


def test_generates_in_batches_then_reads_the_cache(tmp_path):
    generate = Generator()
    first = self_distill(EXAMPLES, generate, tmp_path, batch_size=2, settings={"model": "gpt2"})
    assert first == [Example(f"q{i}", f"model says q{i}") for i in range(5)]
    assert generate.calls == [["q0", "q1"], ["q2", "q3"], ["q4"]]
    (cache,) = tmp_path.iterdir()
    assert cache.name.startswith("selfdistill-") and cache.suffix == ".jsonl"

    again = Generator()
    assert self_distill(EXAMPLES, again, tmp_path, batch_size=2, settings={"model": "gpt2"}) == first
    assert again.calls == []


def test_other_settings_or_prompts_regenerate(tmp_path):
    self_distill(EXAMPLES, Generator(), tmp_path, batch_size=8, settings={"temperature": 0.0})
    generate = Generator()
    self_distill(EXAMPLES, generate, tmp_path, batch_size=8, settings={"temperature": 1.0})
    self_distill(EXAMPLES[:3], generate, tmp_path, batch_size=8, settings={"temperature": 1.0})
    assert len(generate.calls) == 2
    assert len(list(tmp_path.glob("*.jsonl"))) == 3


def test_interrupted_run_resumes(tmp_path):
    with pytest.raises(RuntimeError):
        self_distill(EXAMPLES, Generator(fail_after_calls=1), tmp_path, batch_size=2)
    assert not list(tmp_path.glob("*.jsonl"))  # no half-written cache
    generate = Generator()
    result = self_distill(EXAMPLES, generate, tmp_path, batch_size=2)
    assert generate.calls == [["q2", "q3"], ["q4"]]
    assert [e.answer for e in result] == [f"model says q{i}" for i in range(5)]


def test_wrong_number_of_answers(tmp_path):
    with pytest.raises(ValueError, match="returned 1 answers for 2 prompts"):
        self_distill(EXAMPLES, lambda prompts: ["x"], tmp_path, batch_size=2)
