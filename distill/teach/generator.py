"""A built-in generator of multi-step arithmetic word problems with exact decompositions.

Each problem comes with its sub-questions and one answer sentence per step, in GSM8K's Socratic
style ("How many eggs does Janet sell? ** Janet sells 16 - 7 = 9 eggs."), so the whole
distillation pipeline runs offline with a teacher that is always right. Numbers stay small by
default (every quantity at most 200; multipliers at most 5; one operation per step: add, subtract,
multiply by a small number, halve) because a tiny model trained from scratch on a CPU in minutes
has to learn the arithmetic.

Most templates have a fixed number of steps (2 to 4). The `days_<k>` templates tell one story over
k days (2 to 6), one operation a day, so a run can train on 2-4 steps and hold out 5-6 steps of
the same story (`DataConfig.eval_min_steps`): the depth generalisation the paper is about.

>>> [trace] = generate_problems(1, seed=0)
>>> trace.teacher, trace.correct, 2 <= len(trace.subquestions) <= 4
('generator', True, True)
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dd_prompting.distill.teach.traces import Trace

__all__ = ["GeneratorConfig", "TEMPLATES", "generate_problems", "problem_key"]

# (name, subject pronoun, possessive)
_PEOPLE = [
    ("Janet", "she", "her"), ("Tom", "he", "his"), ("Maria", "she", "her"), ("Ali", "he", "his"),
    ("Sara", "she", "her"), ("Ben", "he", "his"), ("Lena", "she", "her"), ("Omar", "he", "his"),
    ("Emma", "she", "her"), ("Jack", "he", "his"), ("Nina", "she", "her"), ("Leo", "he", "his"),
    ("Ava", "she", "her"), ("Sam", "he", "his"), ("Mia", "she", "her"), ("Ravi", "he", "his"),
]
# Things that come in colours and can be lost, given, packed.
_ITEMS = ["pencils", "marbles", "stickers", "balloons", "beads", "cards", "buttons", "shells", "blocks", "ribbons"]
_FRUITS = ["apples", "oranges", "pears", "lemons", "plums", "peaches", "tomatoes", "carrots"]
_BAKED = ["cookies", "muffins", "cupcakes", "rolls", "pies", "bagels"]
_THINGS = ["book", "hat", "ball", "game", "kite", "lamp", "bag", "toy car"]
# (verb, its base form, what it counts)
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_ACTIVITIES = [
    ("reads", "read", "pages"), ("swims", "swim", "laps"), ("writes", "write", "lines"),
    ("runs", "run", "laps"), ("folds", "fold", "paper cranes"),
]


MAX_STEPS = len(_DAYS) - 1
"""The most steps a generated problem has (a `days_<k>` story)."""


@dataclass
class GeneratorConfig:
    """What problems the generator draws: how many steps, how large the numbers."""

    min_steps: int = field(default=2, metadata={"help": f"Fewest sub-questions per problem (2 to {MAX_STEPS})."})
    max_steps: int = field(
        default=4, metadata={"help": f"Most sub-questions per problem (2 to {MAX_STEPS}; above 4 only the days_<k> stories)."}
    )
    max_value: int = field(default=200, metadata={"help": "Largest quantity anywhere in a problem, stated or computed."})
    max_operand: int = field(default=50, metadata={"help": "Largest amount stated in a problem (before any step)."})
    max_factor: int = field(default=5, metadata={"help": "Largest multiplier, price or count that multiplies (at least 2)."})
    templates: list[str] | None = field(
        default=None, metadata={"help": "Template names to draw from (default: all whose step count fits)."}
    )

    def __post_init__(self):
        if not 2 <= self.min_steps <= self.max_steps <= MAX_STEPS:
            raise ValueError(
                f"GeneratorConfig: need 2 <= min_steps <= max_steps <= {MAX_STEPS}, got min_steps={self.min_steps}, "
                f"max_steps={self.max_steps}"
            )
        if self.max_factor < 2:
            raise ValueError(f"GeneratorConfig.max_factor must be at least 2, got {self.max_factor}")
        if self.max_operand < 5:
            raise ValueError(f"GeneratorConfig.max_operand must be at least 5, got {self.max_operand}")
        if self.max_value < 2 * self.max_operand:
            raise ValueError(
                f"GeneratorConfig.max_value must be at least 2 * max_operand ({2 * self.max_operand}), got {self.max_value}"
            )
        if self.templates is not None:
            unknown = sorted(set(self.templates) - set(TEMPLATES))
            if unknown or not self.templates:
                raise ValueError(
                    f"GeneratorConfig.templates: unknown or empty {unknown or self.templates}; choose from {sorted(TEMPLATES)}"
                )
            if not [name for name in self.templates if self.min_steps <= TEMPLATES[name].steps <= self.max_steps]:
                raise ValueError(
                    f"GeneratorConfig.templates: none of {self.templates} has {self.min_steps}-{self.max_steps} steps"
                )


@dataclass
class _Draft:
    """A problem as a template writes it: the question, its steps as (sub-question, sentence), the values."""

    question: str
    steps: list[tuple[str, str]]
    answer: int
    values: list[int]


class _Rejected(Exception):
    """The numbers drawn break a limit; draw again."""


class _Numbers:
    """Draws numbers within the config's limits and checks every computed quantity."""

    def __init__(self, rng: random.Random, config: GeneratorConfig):
        self.rng, self.config = rng, config

    def operand(self, low: int = 2, high: int | None = None) -> int:
        high = min(self.config.max_operand, high if high is not None else self.config.max_operand)
        if high < low:
            raise _Rejected
        return self.rng.randint(low, high)

    def factor(self) -> int:
        return self.rng.randint(2, self.config.max_factor)

    def check(self, *values: int) -> None:
        if any(value < 1 or value > self.config.max_value for value in values):
            raise _Rejected


def _cap(word: str) -> str:
    return word[0].upper() + word[1:]


@dataclass(frozen=True)
class _Template:
    steps: int
    write: Callable[[_Numbers, random.Random], _Draft]


def _buy_total(num: _Numbers, rng: random.Random) -> _Draft:
    name, items = rng.choice(_PEOPLE)[0], rng.choice(_ITEMS)
    a, b, price = num.operand(), num.operand(), num.factor()
    total = a + b
    cost = total * price
    num.check(total, cost)
    return _Draft(
        f"{name} buys {a} red {items} and {b} blue {items}. Each one costs {price} dollars. "
        f"How much money does {name} spend?",
        [
            (f"How many {items} does {name} buy?", f"{name} buys {a} + {b} = {total} {items}."),
            (f"How much money does {name} spend?", f"{name} spends {total} * {price} = {cost} dollars."),
        ],
        cost,
        [a, b, price],
    )


def _lose_half(num: _Numbers, rng: random.Random) -> _Draft:
    (name, he, _), items = rng.choice(_PEOPLE), rng.choice(_ITEMS)
    other = rng.choice([person for person in _PEOPLE if person[0] != name])[0]
    a = num.operand(6)
    b = num.operand(1, a - 2)
    left = a - b
    if left % 2:
        raise _Rejected
    half = left // 2
    num.check(left, half)
    return _Draft(
        f"{name} has {a} {items}. {_cap(he)} loses {b} of them. Then {he} gives half of the rest to {other}. "
        f"How many {items} does {other} get?",
        [
            (f"How many {items} does {name} have left?", f"{name} has {a} - {b} = {left} {items} left."),
            (f"How many {items} does {other} get?", f"{other} gets {left} / 2 = {half} {items}."),
        ],
        half,
        [a, b],
    )


def _box_half(num: _Numbers, rng: random.Random) -> _Draft:
    items = rng.choice(_ITEMS)
    a = 2 * num.operand(2, num.config.max_operand // 2)
    red = a // 2
    b = num.operand(1, red - 1)
    fine = red - b
    num.check(red, fine)
    return _Draft(
        f"There are {a} {items} in a box. Half of them are red. {b} of the red {items} are broken. "
        f"How many red {items} are not broken?",
        [
            (f"How many red {items} are there?", f"There are {a} / 2 = {red} red {items}."),
            (
                f"How many red {items} are not broken?",
                f"There are {red} - {b} = {fine} red {items} that are not broken.",
            ),
        ],
        fine,
        [a, b],
    )


def _sell_rest(num: _Numbers, rng: random.Random) -> _Draft:
    (name, he, _), items = rng.choice(_PEOPLE), rng.choice(_FRUITS)
    other = rng.choice([person for person in _PEOPLE if person[0] != name])[0]
    a = num.operand(8)
    b, c = num.operand(1, a // 2), num.operand(1, a // 2)
    used = b + c
    rest = a - used
    price = num.factor()
    money = rest * price
    num.check(used, rest, money)
    return _Draft(
        f"{name} picks {a} {items}. {_cap(he)} eats {b} of them and gives {c} to {other}. "
        f"{_cap(he)} sells the rest for {price} dollars each. How much money does {name} make?",
        [
            (f"How many {items} does {name} eat or give away?", f"{name} eats or gives away {b} + {c} = {used} {items}."),
            (f"How many {items} does {name} sell?", f"{name} sells {a} - {used} = {rest} {items}."),
            (f"How much money does {name} make?", f"{name} makes {rest} * {price} = {money} dollars."),
        ],
        money,
        [a, b, c, price],
    )


def _pack_boxes(num: _Numbers, rng: random.Random) -> _Draft:
    (name, he, _), items = rng.choice(_PEOPLE), rng.choice(_ITEMS)
    other = rng.choice([person for person in _PEOPLE if person[0] != name])[0]
    boxes, each = num.factor(), num.operand(2, 30)
    packed = boxes * each
    had = num.operand()
    together = packed + had
    given = num.operand(1, together - 1)
    now = together - given
    num.check(packed, together, now)
    return _Draft(
        f"{name} packs {boxes} boxes with {each} {items} in each box. {_cap(he)} already had {had} {items}. "
        f"Then {he} gives {given} {items} to {other}. How many {items} does {name} have now?",
        [
            (f"How many {items} are in the boxes?", f"There are {boxes} * {each} = {packed} {items} in the boxes."),
            (f"How many {items} does {name} have in all?", f"{name} has {packed} + {had} = {together} {items} in all."),
            (f"How many {items} does {name} have now?", f"{name} has {together} - {given} = {now} {items} now."),
        ],
        now,
        [boxes, each, had, given],
    )


def _savings(num: _Numbers, rng: random.Random) -> _Draft:
    (name, he, _), thing = rng.choice(_PEOPLE), rng.choice(_THINGS)
    weekly, weeks = num.operand(2, 30), num.factor()
    saved = weekly * weeks
    gift = num.operand()
    total = saved + gift
    price = num.operand(1, total - 1)
    left = total - price
    num.check(saved, total, left)
    return _Draft(
        f"{name} saves {weekly} dollars each week for {weeks} weeks. {_cap(he)} also gets {gift} dollars as a gift. "
        f"Then {he} buys a {thing} for {price} dollars. How much money does {name} have left?",
        [
            (f"How much money does {name} save?", f"{name} saves {weekly} * {weeks} = {saved} dollars."),
            (
                f"How much money does {name} have after the gift?",
                f"{name} has {saved} + {gift} = {total} dollars after the gift.",
            ),
            (f"How much money does {name} have left?", f"{name} has {total} - {price} = {left} dollars left."),
        ],
        left,
        [weekly, weeks, gift, price],
    )


def _three_days(num: _Numbers, rng: random.Random) -> _Draft:
    (name, he, _), (verb, base, units) = rng.choice(_PEOPLE), rng.choice(_ACTIVITIES)
    monday, times = num.operand(2, 30), num.factor()
    tuesday = monday * times
    fewer = num.operand(1, tuesday - 1)
    wednesday = tuesday - fewer
    two_days = monday + tuesday
    total = two_days + wednesday
    num.check(tuesday, wednesday, two_days, total)
    asks = f"How many {units} does {name} {base}"
    return _Draft(
        f"{name} {verb} {monday} {units} on Monday. On Tuesday {he} {verb} {times} times as many {units}. "
        f"On Wednesday {he} {verb} {fewer} {units} fewer than on Tuesday. {asks} in the three days?",
        [
            (f"{asks} on Tuesday?", f"{name} {verb} {monday} * {times} = {tuesday} {units} on Tuesday."),
            (f"{asks} on Wednesday?", f"{name} {verb} {tuesday} - {fewer} = {wednesday} {units} on Wednesday."),
            (
                f"{asks} on Monday and Tuesday?",
                f"{name} {verb} {monday} + {tuesday} = {two_days} {units} on Monday and Tuesday.",
            ),
            (f"{asks} in the three days?", f"{name} {verb} {two_days} + {wednesday} = {total} {units} in the three days."),
        ],
        total,
        [monday, times, fewer],
    )


def _budget(num: _Numbers, rng: random.Random) -> _Draft:
    (name, he, _), items, thing = rng.choice(_PEOPLE), rng.choice(_ITEMS), rng.choice(_THINGS)
    count, price = num.factor(), num.factor()
    items_cost = count * price
    thing_cost = num.operand(2, 30)
    spent = items_cost + thing_cost
    money = num.operand(spent + 1)
    left = money - spent
    earned = num.operand()
    now = left + earned
    num.check(items_cost, spent, left, now)
    return _Draft(
        f"{name} has {money} dollars. {_cap(he)} buys {count} {items} for {price} dollars each and a {thing} for "
        f"{thing_cost} dollars. Then {he} earns {earned} dollars. How much money does {name} have now?",
        [
            (f"How much do the {items} cost?", f"The {items} cost {count} * {price} = {items_cost} dollars."),
            (f"How much money does {name} spend?", f"{name} spends {items_cost} + {thing_cost} = {spent} dollars."),
            (f"How much money does {name} have left?", f"{name} has {money} - {spent} = {left} dollars left."),
            (f"How much money does {name} have now?", f"{name} has {left} + {earned} = {now} dollars now."),
        ],
        now,
        [money, count, price, thing_cost, earned],
    )


def _bake_trays(num: _Numbers, rng: random.Random) -> _Draft:
    (name, he, _), baked = rng.choice(_PEOPLE), rng.choice(_BAKED)
    other = rng.choice([person for person in _PEOPLE if person[0] != name])[0]
    trays, each = num.factor(), num.operand(2, 20)
    first = trays * each
    fewer = num.operand(1, first - 1)
    second = first - fewer
    total = first + second
    if total % 2:
        raise _Rejected
    left = total // 2
    num.check(first, second, total, left)
    return _Draft(
        f"{name} bakes {trays} trays of {baked} with {each} {baked} on each tray. {other} bakes {fewer} fewer "
        f"{baked} than {name}. They sell half of all the {baked}. How many {baked} do they have left?",
        [
            (f"How many {baked} does {name} bake?", f"{name} bakes {trays} * {each} = {first} {baked}."),
            (f"How many {baked} does {other} bake?", f"{other} bakes {first} - {fewer} = {second} {baked}."),
            (f"How many {baked} do they bake in all?", f"They bake {first} + {second} = {total} {baked} in all."),
            (f"How many {baked} do they have left?", f"They have {total} / 2 = {left} {baked} left."),
        ],
        left,
        [trays, each, fewer],
    )


def _days(steps: int) -> Callable[[_Numbers, random.Random], _Draft]:
    """A story over `steps` consecutive days, one operation a day, each step the amount after that day."""

    def write(num: _Numbers, rng: random.Random) -> _Draft:
        (name, he, _), items = rng.choice(_PEOPLE), rng.choice(_ITEMS)
        other = rng.choice([person for person in _PEOPLE if person[0] != name])[0]
        first = rng.randrange(len(_DAYS))  # any weekday can start, so every day name is seen in training
        days = [_DAYS[(first + k) % len(_DAYS)] for k in range(steps)]
        amount = start = num.operand(5)
        events, answers = [], []
        for day in days:
            event, sentence, amount = _day_event(num, rng, amount, he, other)
            events.append(f"On {day} {event}.")
            answers.append((f"How many {items} does {name} have after {day}?",
                            f"{name} has {sentence} {items} after {day}."))
        return _Draft(
            f"{name} has {start} {items}. " + " ".join(events) + f" How many {items} does {name} have after {days[-1]}?",
            answers,
            amount,
            [start],
        )

    return write


def _day_event(num: _Numbers, rng: random.Random, amount: int, he: str, other: str) -> tuple[str, str, int]:
    """One day's operation on `amount`, drawn among those that keep every quantity in range."""
    limit = num.config.max_value
    choices = []
    if amount + 1 <= limit:
        choices.append("add")
    if amount > 2:
        choices.append("subtract")
    if amount * 2 <= limit:
        choices.append("multiply")
    if amount % 2 == 0 and amount >= 4:
        choices.append("halve")
    kind = rng.choice(choices)
    if kind == "add":
        more = num.operand(1, min(num.config.max_operand, limit - amount))
        return f"{he} finds {more} more", f"{amount} + {more} = {amount + more}", amount + more
    if kind == "subtract":
        fewer = num.operand(1, amount - 1)
        return f"{he} gives {fewer} to {other}", f"{amount} - {fewer} = {amount - fewer}", amount - fewer
    if kind == "multiply":
        times = rng.randint(2, max(2, min(num.config.max_factor, limit // amount)))
        return f"{he} ends up with {times} times as many", f"{amount} * {times} = {amount * times}", amount * times
    return f"{he} loses half of them", f"{amount} / 2 = {amount // 2}", amount // 2


TEMPLATES: dict[str, _Template] = {
    "buy_total": _Template(2, _buy_total),
    "lose_half": _Template(2, _lose_half),
    "box_half": _Template(2, _box_half),
    "sell_rest": _Template(3, _sell_rest),
    "pack_boxes": _Template(3, _pack_boxes),
    "savings": _Template(3, _savings),
    "three_days": _Template(4, _three_days),
    "budget": _Template(4, _budget),
    "bake_trays": _Template(4, _bake_trays),
    **{f"days_{steps}": _Template(steps, _days(steps)) for steps in range(2, MAX_STEPS + 1)},
}

_EQUATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")


def problem_key(trace: Trace) -> tuple[str, ...]:
    """The arithmetic of a problem: the equation of each step ("3+4=7", "7*2=14").

    Two problems with the same key differ only in names and wording, so held-out problems are
    kept apart from training problems by key, not by text.
    """
    key = []
    for sentence in trace.subanswers:
        match = _EQUATION.search(sentence)
        key.append("".join(match.groups()[:3]) + "=" + match.group(4) if match else sentence)
    return tuple(key)


def _draw(template: _Template, numbers: _Numbers, rng: random.Random, tries: int = 50) -> _Draft | None:
    # Redraw within the chosen template, so that templates with more rejections are not drawn less often.
    for _ in range(tries):
        try:
            return template.write(numbers, rng)
        except _Rejected:
            continue
    return None


def generate_problems(
    n: int,
    *,
    seed: int,
    config: GeneratorConfig | None = None,
    exclude: Iterable[Trace] = (),
    id_prefix: str = "gen",
) -> list[Trace]:
    """Draw `n` distinct problems with their exact decompositions, as correct `Trace`s of teacher "generator".

    The same seed and config give the same problems. No two problems share their arithmetic
    (`problem_key`), and none repeats the arithmetic of a trace in `exclude`: pass the training
    problems there when drawing held-out ones.
    """
    if n < 0:
        raise ValueError(f"generate_problems: n must be >= 0, got {n}")
    config = config or GeneratorConfig()
    names = config.templates or list(TEMPLATES)
    names = [name for name in names if config.min_steps <= TEMPLATES[name].steps <= config.max_steps]
    rng = random.Random(seed)
    numbers = _Numbers(rng, config)
    seen = {problem_key(trace) for trace in exclude}
    traces: list[Trace] = []
    attempts, max_attempts = 0, 1000 + 200 * n
    while len(traces) < n:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(
                f"generate_problems: found only {len(traces)} distinct problems of {n} after {max_attempts} draws; "
                "raise GeneratorConfig.max_operand/max_value or allow more templates"
            )
        draft = _draw(TEMPLATES[rng.choice(names)], numbers, rng)
        if draft is None:
            continue
        answer = str(draft.answer)
        trace = Trace(
            id=f"{id_prefix}-{seed}-{len(traces)}",
            question=draft.question,
            gold=answer,
            subquestions=[question for question, _ in draft.steps],
            subanswers=[sentence for _, sentence in draft.steps],
            answer=answer,
            correct=True,
            teacher="generator",
        )
        key = problem_key(trace)
        if key in seen:
            continue
        seen.add(key)
        traces.append(trace)
    return traces
