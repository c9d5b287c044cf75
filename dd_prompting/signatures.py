"""The three steps of decomposition prompting, as DSPy signatures.

Each is written for a problem in a field called `problem`; `DecomposedSolver` swaps in the input
fields of whatever signature it is given, so the same instructions serve `question -> answer`,
`passage, question -> answer: float`, and so on.
"""

import dspy

__all__ = ["Decompose", "SolveWithSubquestions", "AnswerSubquestion"]


class Decompose(dspy.Signature):
    """Break the problem into the simpler sub-questions that must be answered, in order, to solve it.
    Each sub-question asks for one intermediate quantity; the last one asks for what the problem asks."""

    problem: str = dspy.InputField(desc="The problem to solve.")
    subquestions: list[str] = dspy.OutputField(
        desc="The sub-questions, in the order they should be answered, one per item."
    )


class SolveWithSubquestions(dspy.Signature):
    """Answer each sub-question in order, using the answers before it, then give the final answer
    to the problem. Show the calculation in each sub-answer."""

    problem: str = dspy.InputField(desc="The problem to solve.")
    subquestions: list[str] = dspy.InputField(desc="Sub-questions that lead to the answer, in order.")
    subanswers: list[str] = dspy.OutputField(
        desc="One answer per sub-question, in the same order, each with its calculation."
    )
    answer: str = dspy.OutputField(desc="The final answer to the problem.")


class AnswerSubquestion(dspy.Signature):
    """Answer the next sub-question of the problem, using the sub-questions already answered.
    Show the calculation."""

    problem: str = dspy.InputField(desc="The problem to solve.")
    solved: str = dspy.InputField(desc="Earlier sub-questions with their answers, one pair per line; may be empty.")
    subquestion: str = dspy.InputField(desc="The sub-question to answer now.")
    subanswer: str = dspy.OutputField(desc="The answer to the sub-question, with its calculation.")
