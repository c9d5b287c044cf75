import asyncio
import logging
import re
import threading
import time

import dspy
import pytest
from dspy.utils import DummyLM
from dspy.utils.exceptions import AdapterParseError

from dd_prompting import WORKED_EXAMPLES, YES_NO_WORKED_EXAMPLES, DecomposedSolver, numeric_match
from dd_prompting.testing import OpenAICompatibleServer, last_user_text
from scripted_engine import scripted_lm

SUBQUESTIONS = ["How many eggs does Janet sell?", "How much does Janet make?"]


def joint_replies(answer="18"):
    return [
        {"subquestions": SUBQUESTIONS},
        {"subanswers": ["She sells 16 - 7 = 9 eggs.", "She makes 9 * 2 = 18 dollars."], "answer": answer},
    ]


def test_joint_mode_decomposes_then_solves_in_two_calls():
    lm = DummyLM(joint_replies())
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer")(question="Janet's ducks ...")
    assert len(lm.history) == 2
    assert pred.answer == "18"
    assert pred.subquestions == SUBQUESTIONS
    assert pred.subanswers[1] == "She makes 9 * 2 = 18 dollars."
    assert pred.fallback is None and pred.parse_failures == []


def test_iterative_mode_makes_one_call_per_subquestion_and_feeds_answers_back():
    lm = DummyLM([
        {"subquestions": SUBQUESTIONS},
        {"subanswer": "She sells 16 - 7 = 9 eggs."},
        {"subanswer": "She makes 9 * 2 = 18 dollars.", "answer": "18"},
    ])
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer", mode="iterative")(question="Janet's ducks ...")
    assert len(lm.history) == 3
    assert pred.answer == "18"
    assert pred.subanswers == ["She sells 16 - 7 = 9 eggs.", "She makes 9 * 2 = 18 dollars."]
    last_prompt = lm.history[-1]["messages"][-1]["content"]
    assert "She sells 16 - 7 = 9 eggs." in last_prompt
    assert SUBQUESTIONS[1] in last_prompt


def test_typed_and_class_signatures_keep_their_outputs_and_instructions():
    class WordProblem(dspy.Signature):
        """Amounts are in euros."""

        question: str = dspy.InputField()
        answer: float = dspy.OutputField()

    solver = DecomposedSolver(WordProblem)
    assert "Amounts are in euros." in solver.solve.signature.instructions
    assert "Amounts are in euros." in solver.decompose.signature.instructions
    lm = DummyLM(joint_replies(answer="18.5"))
    with dspy.context(lm=lm):
        pred = solver(question="...")
    assert pred.answer == 18.5


def test_empty_decomposition_falls_back_to_a_direct_answer():
    lm = DummyLM([{"subquestions": []}, {"answer": "18"}])
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer")(question="...")
    assert len(lm.history) == 2
    assert pred.answer == "18"
    assert pred.fallback == "empty decomposition"
    assert pred.subquestions == []


@pytest.mark.no_adapter
def test_unparsable_output_is_recorded_never_raised():
    lm, engine = scripted_lm(["", "", "no answer line here at all"])
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer: float", demos=None)(question="...")
    assert pred.fallback.startswith("unparsable decomposition")
    assert pred.parse_failures == ["decompose", "direct"]
    assert pred.answer is None


@pytest.mark.no_adapter
def test_iterative_step_parse_failure_is_counted_and_solving_goes_on():
    lm, engine = scripted_lm(["1. How many?\n2. How much?", "It is 9.", "It is 18.\n(no final line)"])
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer", mode="iterative")(question="...")
    assert len(engine.requests) == 3
    assert pred.parse_failures == ["step 2"]
    assert pred.subanswers == ["It is 9.", ""]
    assert pred.answer is None


@pytest.mark.no_adapter
def test_local_models_get_the_plain_text_adapter_automatically():
    lm, engine = scripted_lm(["1. How many eggs?\n2. How much money?", "1. 9 eggs\n2. 18 dollars\nAnswer: 18"])
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer")(question="Janet's ducks ...")
    assert pred.answer == "18" and pred.subquestions == ["How many eggs?", "How much money?"]
    first = engine.requests[0]
    assert first.messages[-1].text.endswith("Subquestions:")
    assert "\nQuestion:" in first.config.stop


def test_max_subquestions_keeps_the_last_one():
    many = [f"Step {i}?" for i in range(1, 7)]
    lm = DummyLM([{"subquestions": many}, {"subanswers": ["a", "b", "c"], "answer": "1"}])
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer", max_subquestions=3)(question="...")
    assert pred.subquestions == ["Step 1?", "Step 2?", "Step 6?"]


def test_predictors_are_visible_to_dspy():
    joint = DecomposedSolver("question -> answer")
    iterative = DecomposedSolver("question -> answer", mode="iterative")
    assert [name for name, _ in joint.named_predictors()] == ["decompose", "solve", "direct"]
    assert [name for name, _ in iterative.named_predictors()] == [
        "decompose", "answer_step", "answer_last_step", "direct"]
    assert DecomposedSolver("question -> answer", demos=None).decompose.demos == []


@pytest.mark.parametrize(
    ("signature", "demos", "first_problem"),
    [
        ("question -> answer: float", "builtin", WORKED_EXAMPLES[0].problem),
        ("question -> answer: int", "builtin", WORKED_EXAMPLES[0].problem),
        ("question -> answer: bool", "builtin", YES_NO_WORKED_EXAMPLES[0].problem),
        ("question -> answer", "math", WORKED_EXAMPLES[0].problem),
        ("question -> answer", "yes_no", YES_NO_WORKED_EXAMPLES[0].problem),
    ],
)
def test_builtin_demos_follow_the_answer_type_or_an_explicit_choice(signature, demos, first_problem):
    for mode in ("joint", "iterative"):
        solver = DecomposedSolver(signature, mode=mode, demos=demos)
        assert all(len(predictor.demos) == 4 for predictor in solver.predictors())
        assert solver.decompose.demos[0]["question"] == first_problem


def test_a_non_numeric_answer_starts_without_demos_and_says_so_once(caplog):
    with caplog.at_level(logging.INFO, logger="dd_prompting.modules"):
        solver = DecomposedSolver("review -> sentiment")
    assert all(predictor.demos == [] for predictor in solver.predictors())
    notes = [record for record in caplog.records if "without demos" in record.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "sentiment: str" in notes[0].getMessage() and "demos='math'" in notes[0].getMessage()


def test_yes_no_worked_examples_drive_a_bool_answer():
    lm = DummyLM([{"subquestions": ["Is it raining?", "Should I take an umbrella?"]},
                  {"subanswers": ["Yes, it is raining.", "Yes, rain means an umbrella."], "answer": "yes"}])
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer: bool")(question="Should I take an umbrella today?")
    assert pred.answer is True
    assert "Could a person born in 1990 have voted" in lm.history[0]["messages"][1]["content"]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        DecomposedSolver("question -> answer", mode="tree")
    with pytest.raises(ValueError, match="subquestions"):
        DecomposedSolver("question -> subquestions")
    with pytest.raises(ValueError, match="max_subquestions"):
        DecomposedSolver("question -> answer", max_subquestions=0)


def test_bootstrap_few_shot_compiles_demos_for_every_solving_predictor():
    trainset = [dspy.Example(question=f"q{i}", answer="18").with_inputs("question") for i in range(2)]
    lm = DummyLM(joint_replies() * 4)
    with dspy.context(lm=lm):
        optimizer = dspy.BootstrapFewShot(metric=numeric_match, max_bootstrapped_demos=2, max_labeled_demos=0)
        compiled = optimizer.compile(DecomposedSolver("question -> answer", demos=None), trainset=trainset)
    assert len(compiled.decompose.demos) == 2
    assert len(compiled.solve.demos) == 2
    assert compiled.solve.demos[0]["subquestions"] == SUBQUESTIONS


def test_save_and_load_round_trip_keeps_demos(tmp_path):
    solver = DecomposedSolver("question -> answer", mode="iterative", demos="math")
    solver.answer_step.demos = solver.answer_step.demos[:1]
    path = tmp_path / "solver.json"
    solver.save(str(path))
    loaded = DecomposedSolver("question -> answer", mode="iterative", demos=None)
    loaded.load(str(path))
    assert len(loaded.answer_step.demos) == 1
    assert len(loaded.decompose.demos) == 4
    assert loaded.answer_step.demos[0]["subquestion"] == solver.answer_step.demos[0]["subquestion"]


def test_evaluate_scores_a_program_built_around_the_solver():
    class Program(dspy.Module):
        def __init__(self):
            super().__init__()
            self.reason = DecomposedSolver("question -> answer")

        def forward(self, question):
            return self.reason(question=question)

    devset = [dspy.Example(question="q", answer="18").with_inputs("question")]
    lm = DummyLM(joint_replies())
    with dspy.context(lm=lm):
        result = dspy.Evaluate(devset=devset, metric=numeric_match, num_threads=1, display_progress=False)(Program())
    assert result.score == 100.0


# ChainOfThought's contract: config, reasoning, completions, strict parsing.

def test_config_reaches_every_inner_predictor_as_in_chain_of_thought():
    solver = DecomposedSolver("question -> answer", mode="iterative", temperature=0.7, max_tokens=300)
    assert all(predictor.config == {"temperature": 0.7, "max_tokens": 300} for predictor in solver.predictors())
    sampled = DecomposedSolver("question -> answer", mode="iterative", n=3, temperature=0.7)
    assert {name: p.config.get("n", 1) for name, p in sampled.named_predictors()} == {
        "decompose": 1, "answer_step": 1, "answer_last_step": 3, "direct": 3}
    lm = DummyLM([
        {"subquestions": SUBQUESTIONS},
        {"subanswer": "She sells 16 - 7 = 9 eggs."},
        {"subanswer": "She makes 9 * 2 = 18 dollars.", "answer": "18"},
    ])
    with dspy.context(lm=lm):
        solver(question="Janet's ducks ...")
    assert [call["kwargs"]["temperature"] for call in lm.history] == [0.7, 0.7, 0.7]


def test_every_prediction_has_reasoning_and_completions():
    lm = DummyLM(joint_replies())
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer")(question="Janet's ducks ...")
    assert pred.reasoning == (
        "Q: How many eggs does Janet sell?\nA: She sells 16 - 7 = 9 eggs.\n"
        "Q: How much does Janet make?\nA: She makes 9 * 2 = 18 dollars."
    )
    assert pred.completions.answer == ["18"] and pred.completions.reasoning == [pred.reasoning]

    lm = DummyLM([{"subquestions": []}, {"answer": "18"}])
    with dspy.context(lm=lm):
        direct = DecomposedSolver("question -> answer")(question="...")
    assert direct.reasoning == "" and direct.completions.answer == ["18"]


def test_n_samples_of_the_final_call_are_the_completions():
    lm = DummyLM([
        {"subquestions": SUBQUESTIONS},  # one decomposition: only the final call draws n=2
        {"subanswers": ["9 eggs.", "9 * 2 = 18 dollars."], "answer": "18"},
        {"subanswers": ["10 eggs.", "10 * 2 = 20 dollars."], "answer": "20"},
    ])
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer", n=2)(question="Janet's ducks ...")
    assert [call["kwargs"].get("n", 1) for call in lm.history] == [1, 2]
    assert pred.answer == "18" and pred.subquestions == SUBQUESTIONS
    assert pred.completions.answer == ["18", "20"]
    assert "A: 10 * 2 = 20 dollars." in pred.completions.reasoning[1]
    assert pred.completions[1].subanswers == ["10 eggs.", "10 * 2 = 20 dollars."]


def test_reasoning_can_be_a_dspy_reasoning():
    lm = DummyLM(joint_replies())
    with dspy.context(lm=lm):
        pred = DecomposedSolver("question -> answer", rationale_field_type=dspy.Reasoning)(question="...")
    assert isinstance(pred.reasoning, dspy.Reasoning)
    assert "Q: How much does Janet make?" in pred.reasoning.content
    with pytest.raises(ValueError, match="rationale_field_type"):
        DecomposedSolver("question -> answer", rationale_field_type=list)


def test_a_rationale_field_is_accepted_as_by_chain_of_thought():
    with dspy.context(lm=DummyLM(joint_replies())):
        pred = DecomposedSolver("question -> answer", rationale_field=dspy.OutputField(desc="Think."))(question="...")
    assert isinstance(pred.reasoning, str) and "Q: How much does Janet make?" in pred.reasoning
    typed = dspy.OutputField(desc="Think.")
    typed.annotation = dspy.Reasoning
    assert DecomposedSolver("question -> answer", rationale_field=typed).rationale_field_type is dspy.Reasoning


@pytest.mark.parametrize(
    ("mode", "replies"),
    [
        ("joint", [""]),  # the decomposition does not parse
        ("joint", ["1. How many?\n2. How much?", "1. 9\n2. 18\n(no final line)"]),
        ("iterative", ["1. How many?\n2. How much?", "It is 9.", "It is 18.\n(no final line)"]),
    ],
)
@pytest.mark.no_adapter
def test_strict_raises_parse_errors_as_chain_of_thought_does(mode, replies):
    lm, engine = scripted_lm(replies)
    with dspy.context(lm=lm), pytest.raises(AdapterParseError):
        DecomposedSolver("question -> answer", mode=mode, strict=True)(question="...")
    assert len(engine.requests) == len(replies)  # raised at the failing call, with no fallback after it


# Async: the same calls as forward.

ITERATIVE_REPLIES = [
    {"subquestions": SUBQUESTIONS},
    {"subanswer": "She sells 16 - 7 = 9 eggs."},
    {"subanswer": "She makes 9 * 2 = 18 dollars.", "answer": "18"},
]


@pytest.mark.parametrize(("mode", "replies"), [("joint", joint_replies()), ("iterative", ITERATIVE_REPLIES)])
def test_acall_makes_the_same_calls_and_answer_as_a_call(mode, replies):
    sync_lm, async_lm = DummyLM(replies), DummyLM(replies)
    with dspy.context(lm=sync_lm):
        expected = DecomposedSolver("question -> answer", mode=mode)(question="Janet's ducks ...")
    with dspy.context(lm=async_lm):
        pred = asyncio.run(DecomposedSolver("question -> answer", mode=mode).acall(question="Janet's ducks ..."))
    assert pred.toDict() == expected.toDict()
    assert [call["messages"] for call in async_lm.history] == [call["messages"] for call in sync_lm.history]


def test_gather_runs_iterative_problems_at_once_each_in_order():
    in_flight, most = 0, 0
    lock = threading.Lock()

    def respond(request):
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.3)
        with lock:
            in_flight -= 1
        prompt = last_user_text(request)
        problem = re.search(r"Problem (\w)", prompt).group(1)
        if "`[[ ## subquestions ## ]]`" in prompt:
            return f'[[ ## subquestions ## ]]\n["{problem} first?", "{problem} second?"]\n[[ ## completed ## ]]'
        if "`[[ ## answer ## ]]`" not in prompt:
            return f"[[ ## subanswer ## ]]\n{problem} one\n[[ ## completed ## ]]"
        # The last step sees the first step's answer: the steps ran in order.
        seen = f"{problem} one" in prompt
        return f"[[ ## subanswer ## ]]\n{problem} two\n\n[[ ## answer ## ]]\n{problem}{seen}\n[[ ## completed ## ]]"

    async def solve_all(solver):
        return await asyncio.gather(*(solver.acall(question=f"Problem {name}.") for name in "ABC"))

    with OpenAICompatibleServer(respond) as server:
        lm = dspy.LM("openai/scripted", api_base=server.base_url, api_key="x", cache=False)
        with dspy.context(lm=lm):
            preds = asyncio.run(solve_all(DecomposedSolver("question -> answer", mode="iterative", demos=None)))
    assert [pred.answer for pred in preds] == ["ATrue", "BTrue", "CTrue"]
    assert [pred.subanswers for pred in preds][1] == ["B one", "B two"]
    assert server.call_count == 9
    assert most == 3  # the three problems were in flight together


# The adapter follows the LM each call uses.

PLAIN_JOINT = ["1. How many eggs?\n2. How much money?", "1. 9 eggs\n2. 18 dollars\nAnswer: 18"]


@pytest.mark.no_adapter
def test_set_lm_to_a_local_model_gets_plain_text():
    lm, engine = scripted_lm(PLAIN_JOINT)
    solver = DecomposedSolver("question -> answer")
    solver.set_lm(lm)
    pred = solver(question="Janet's ducks ...")
    assert engine.requests[0].messages[-1].text.endswith("Subquestions:")
    assert pred.answer == "18" and pred.parse_failures == []


@pytest.mark.no_adapter
def test_a_call_time_local_lm_gets_plain_text():
    lm, engine = scripted_lm(PLAIN_JOINT)
    api = DummyLM([])
    with dspy.context(lm=api):
        pred = DecomposedSolver("question -> answer")(question="Janet's ducks ...", lm=lm)
    assert engine.requests[0].messages[-1].text.endswith("Subquestions:")
    assert pred.answer == "18" and api.history == []


@pytest.mark.no_adapter
def test_an_api_lm_set_on_the_program_gets_chat_format_under_a_global_local_model():
    local, engine = scripted_lm([])
    api = DummyLM(joint_replies())
    solver = DecomposedSolver("question -> answer")
    solver.set_lm(api)
    with dspy.context(lm=local):
        pred = solver(question="Janet's ducks ...")
    assert "[[ ## question ## ]]" in api.history[0]["messages"][-1]["content"]
    assert pred.answer == "18" and engine.requests == []


@pytest.mark.no_adapter
@pytest.mark.parametrize("local_part", ["decompose", "solve"])
def test_a_hybrid_pair_sends_each_lm_its_own_format(local_part):
    local_reply = PLAIN_JOINT[0] if local_part == "decompose" else PLAIN_JOINT[1]
    local, engine = scripted_lm([local_reply])
    api = DummyLM(joint_replies()[:1] if local_part == "solve" else joint_replies()[1:])
    solver = DecomposedSolver("question -> answer")
    getattr(solver, local_part).lm = local
    with dspy.context(lm=api):
        pred = solver(question="Janet's ducks ...")
    assert len(engine.requests) == 1 and len(api.history) == 1
    assert "[[ ## " not in engine.requests[0].messages[-1].text
    assert "[[ ## question ## ]]" in api.history[0]["messages"][-1]["content"]
    assert pred.answer == "18" and pred.parse_failures == []


# Streaming: the answer streams from whichever step writes it.

def _streamed(program, **inputs):
    from dspy.streaming import StreamResponse

    async def collect():
        chunks, final = [], None
        async for item in dspy.streamify(program, stream_listeners=program.stream_listeners())(**inputs):
            if isinstance(item, StreamResponse):
                chunks.append(item)
            elif isinstance(item, dspy.Prediction):
                final = item
        return chunks, final

    return asyncio.run(collect())


@pytest.mark.parametrize("decomposition, streamed_from", [('["How many eggs?", "How much money?"]', "solve"),
                                                         ("[]", "direct")])
def test_the_answer_streams_from_the_solver_or_from_the_direct_fallback(decomposition, streamed_from):
    def respond(request):
        prompt = last_user_text(request)
        if "`[[ ## subquestions ## ]]`" in prompt:
            return f"[[ ## subquestions ## ]]\n{decomposition}\n\n[[ ## completed ## ]]"
        subanswers = '[[ ## subanswers ## ]]\n["9 eggs", "18 dollars"]\n\n' if "subanswers" in prompt else ""
        return f"{subanswers}[[ ## answer ## ]]\nShe makes 18 dollars every day.\n\n[[ ## completed ## ]]"

    program = DecomposedSolver("question -> answer", demos=None)
    with OpenAICompatibleServer(respond) as server:
        lm = dspy.LM("openai/scripted", api_base=server.base_url, api_key="x", cache=False)
        with dspy.context(lm=lm):
            chunks, final = _streamed(program, question="Janet's ducks ...")
    # Only the listened-to step streams; the decomposition comes back whole.
    assert [bool(request.get("stream")) for request in server.requests] == [False, True]
    assert {chunk.predict_name for chunk in chunks} == {streamed_from}
    assert {chunk.signature_field_name for chunk in chunks} == {"answer"}
    assert len(chunks) > 2  # token by token, not one piece
    assert "".join(chunk.chunk for chunk in chunks).strip() == final.answer == "She makes 18 dollars every day."


def test_a_plain_answer_listener_is_ambiguous_and_the_helper_names_every_writer():
    from dspy.streaming import StreamListener

    program = DecomposedSolver("question -> answer", mode="iterative", demos=None)
    with pytest.raises(ValueError, match="not unique"):
        dspy.streamify(program, stream_listeners=[StreamListener(signature_field_name="answer")])(question="q")
    assert [l.predict_name for l in program.stream_listeners()] == ["answer_last_step", "direct"]
    assert [l.predict_name for l in program.stream_listeners("subanswer", allow_reuse=True)] == \
        ["answer_step", "answer_last_step"]
    with pytest.raises(ValueError, match="writes 'rationale'"):
        program.stream_listeners("rationale")


def test_the_default_reasoning_type_is_chain_of_thoughts():
    import inspect

    default = inspect.signature(dspy.ChainOfThought.__init__).parameters["rationale_field_type"].default
    assert DecomposedSolver("question -> answer").rationale_field_type is default
