import re
from collections import Counter

import pytest

from dd_prompting.distill.teach.generator import TEMPLATES, GeneratorConfig, generate_problems, problem_key

_EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def _recompute(sentence):
    left, op, right, result = _EQUATION.search(sentence).groups()
    left, right, result = int(left), int(right), int(result)
    value = {"+": left + right, "-": left - right, "*": left * right, "/": left / right}[op]
    return value, result, op, left, right


def test_same_seed_gives_the_same_problems_and_another_seed_others():
    first, again, other = (generate_problems(50, seed=s) for s in (7, 7, 8))
    assert first == again
    assert [t.question for t in first] != [t.question for t in other]


@pytest.mark.parametrize("seed", [0, 1])
def test_every_step_equation_is_right_and_chains_to_the_gold_answer(seed):
    for trace in generate_problems(300, seed=seed):
        assert 2 <= len(trace.subquestions) == len(trace.subanswers) <= 4
        results = []
        for sentence in trace.subanswers:
            value, result, op, left, right = _recompute(sentence)
            assert value == result, sentence
            # every operand is stated in the question or computed by an earlier step
            for operand in (left, right):
                if op == "/" and operand == right:
                    continue
                assert str(operand) in re.findall(r"\d+", trace.question) or operand in results, (trace.question, sentence)
            results.append(result)
        assert trace.answer == trace.gold == str(results[-1])
        assert trace.correct and trace.teacher == "generator" and trace.error is None


def test_numbers_stay_within_the_configured_limits():
    config = GeneratorConfig(max_value=120, max_operand=30, max_factor=3)
    for trace in generate_problems(300, seed=3, config=config):
        for sentence in trace.subanswers:
            _, result, op, left, right = _recompute(sentence)
            assert 1 <= result <= 120
            if op == "*":
                assert min(left, right) <= 3
        assert all(int(n) <= 120 for n in re.findall(r"\d+", trace.question))


def test_step_counts_and_templates_can_be_restricted():
    two_step = generate_problems(100, seed=0, config=GeneratorConfig(max_steps=2))
    assert {len(t.subquestions) for t in two_step} == {2}
    only = generate_problems(30, seed=0, config=GeneratorConfig(templates=["budget"]))
    assert all(t.question.count("dollars") >= 2 and len(t.subquestions) == 4 for t in only)


def test_all_step_counts_and_templates_appear_by_default():
    traces = generate_problems(900, seed=0)
    counts = Counter(len(t.subquestions) for t in traces)
    assert set(counts) == {2, 3, 4} and min(counts.values()) > 150
    assert len({t.question.split()[1] for t in traces}) > 5  # several templates' wording


def test_problems_are_distinct_and_held_out_problems_share_no_arithmetic_with_training():
    train = generate_problems(1000, seed=0)
    assert len({problem_key(t) for t in train}) == 1000
    assert len({t.id for t in train}) == 1000
    held_out = generate_problems(200, seed=1, exclude=train)
    assert not {problem_key(t) for t in train} & {problem_key(t) for t in held_out}


def test_problem_key_ignores_names_but_not_numbers():
    trace = next(t for t in generate_problems(20, seed=0) if t.subanswers[0].startswith(t.question.split()[0]))
    name = trace.question.split()[0]
    renamed = trace.__class__(**{**trace.to_dict(), "subanswers": [s.replace(name, "Zed") for s in trace.subanswers]})
    assert renamed.subanswers != trace.subanswers
    assert problem_key(renamed) == problem_key(trace)
    changed = trace.__class__(**{**trace.to_dict(), "subanswers": ["x = 1 + 2 = 3"] + trace.subanswers[1:]})
    assert problem_key(changed) != problem_key(trace)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"min_steps": 3, "max_steps": 2}, "min_steps"),
        ({"max_steps": 7}, "max_steps"),
        ({"max_factor": 1}, "max_factor"),
        ({"max_value": 50, "max_operand": 40}, "max_value"),
        ({"templates": ["nope"]}, "templates"),
        ({"templates": ["buy_total"], "min_steps": 3}, "templates"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GeneratorConfig(**kwargs)


def test_impossible_request_fails_clearly_instead_of_looping():
    config = GeneratorConfig(templates=["lose_half"], max_operand=6, max_value=12)
    with pytest.raises(RuntimeError, match="distinct problems"):
        generate_problems(500, seed=0, config=config)


def test_every_template_is_reachable():
    for name, template in TEMPLATES.items():
        config = GeneratorConfig(templates=[name], min_steps=template.steps, max_steps=template.steps)
        assert all(len(trace.subquestions) == template.steps for trace in generate_problems(3, seed=0, config=config))


def test_days_stories_go_beyond_the_training_depth_with_the_same_story():
    train = generate_problems(600, seed=0)
    held_out = generate_problems(100, seed=1, config=GeneratorConfig(min_steps=5, max_steps=6), exclude=train)
    assert {len(trace.subquestions) for trace in train} == {2, 3, 4}
    assert {len(trace.subquestions) for trace in held_out} == {5, 6}
    # The longer stories are the trained story told over more days: the same sentences, one more each day.
    days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
    assert all(sq.endswith(tuple(f" after {day}?" for day in days)) for t in held_out for sq in t.subquestions)
    # Every day a held-out story names was a day in some training story's sub-questions.
    trained_days = {sq.rsplit(" ", 1)[-1] for t in train for sq in t.subquestions if sq.endswith(tuple(f" after {d}?" for d in days))}
    assert trained_days == {f"{day}?" for day in days}
