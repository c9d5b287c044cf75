"""DSPy optimizers that need an extra: MIPROv2 (optuna, from the `optimizers` extra) on DecomposedSolver."""

import os
import re

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from dd_prompting import DecomposedSolver, numeric_match
from dd_prompting.testing import OpenAICompatibleServer

PROPOSED = "Answer each sub-question in order with its calculation, then give the number."


def _fill_the_asked_fields(request):
    # Whatever DSPy asks (a decomposition, a solution, or one of MIPROv2's proposal prompts), fill in
    # each output field its system message lists.
    system = request["messages"][0]["content"]
    outputs = system.split("Your output fields are:", 1)[1].split("All interactions", 1)[0]
    values = {"subquestions": '["How many apples are there in all?"]', "subanswers": '["3 + 4 = 7 apples."]',
              "answer": "7"}
    names = re.findall(r"^\d+\. `(\w+)`", outputs, re.M)
    return "\n\n".join(f"[[ ## {name} ## ]]\n{values.get(name, PROPOSED)}" for name in names) + "\n\n[[ ## completed ## ]]"


def test_mipro_v2_compiles_a_decomposed_solver_program():
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    examples = [dspy.Example(question=question, answer="7").with_inputs("question") for _ in range(6)]
    with OpenAICompatibleServer(_fill_the_asked_fields) as server:
        lm = dspy.LM("openai/scripted", api_base=server.base_url, api_key="not-a-key", cache=False)
        with dspy.context(lm=lm):
            optimizer = dspy.MIPROv2(metric=numeric_match, auto=None, num_candidates=2, num_threads=1,
                                     max_bootstrapped_demos=1, max_labeled_demos=1)
            compiled = optimizer.compile(DecomposedSolver("question -> answer: float"), trainset=examples[:4],
                                         valset=examples[4:], num_trials=2, minibatch=False)
            answer = compiled(question=question).answer
    assert isinstance(compiled, DecomposedSolver) and answer == 7.0
    assert {name for name, _ in compiled.named_predictors()} == {"decompose", "solve", "direct"}
    # The optimizer's proposal prompts reached the server, and their candidates were tried.
    assert any("proposed_instruction" in m["content"] for r in server.requests for m in r["messages"])
