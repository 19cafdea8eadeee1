"""Procedural one-function programming tasks with hidden tests, sized for a 135M model (`data.source: code_tasks`).

Each task asks for one Python function of one argument, described in plain steps, with a few
shown examples; the `tests` column (read by the `code` reward) holds the shown examples *and*
hidden tests on other inputs. Three families:

- `lists`: a pipeline over a list of integers: keep some numbers (even, odd, positive, negative,
  greater/less than k, divisible by k), transform each (square, multiply, add, negate, absolute
  value), then reduce (sum, count, largest, smallest, product, or the list itself);
  `min_ops`/`max_ops` say how many of the three stages a task has.
- `strings`: one string operation (case changes, reversing, counting or removing a letter,
  replacing letters, word operations, palindromes, prefixes).
- `numbers`: small loops and conditionals on an integer n (sums up to n, factorial, digit sums,
  multiples below n, FizzBuzz with other divisors, sign words, clamping).

How the tasks are checked (a generator bug must fail loudly, not train on wrong labels): the
expected values come from a Python callable (the *spec*); the *reference solution* is separate
source text, executed and compared against every test when the task is generated, and a
mismatch raises `GeneratorError`. Hidden tests never repeat a shown call, and their expected
values are never all equal, so neither echoing the examples nor returning a constant passes.
With `edge_cases` every edge input of the family is a hidden test (lists: [], [0], one number;
strings: "", one word; numbers: 0, a negative, 1). Each specification also names its *mutants*,
the near misses a small model writes (the keep or transform stage ignored, `>=` for `>`, largest
for smallest, a range bound off by one, FizzBuzz never returned, the minus sign counted…); a
regular hidden input is swapped for a probe input until every mutant that some probe tells apart
fails a hidden test. (Before the mutants, 7 of the base model's 37 held-out passes were wrong
programs that 8 random tests let through, `bench/code_hacking_review.py --stress`.)

Seeding and splits, as reasoning-gym's procedural datasets: item i of seed s is a pure function
of (s, i). The held-out set comes from another seed; a task *instance* (family, operation and
parameters: the function's specification, whatever its test inputs) that appears in the held-out
set is never served in training (the training item is redrawn), so held-out scores measure
unseen specifications, not unseen inputs to a trained one.

Knobs (`data.task_config`): families, min_ops, max_ops, shown_examples, hidden_tests,
edge_cases (empty lists and strings, zero, negative n among the hidden tests), max_len,
max_value.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from ..errors import UserError

FAMILIES = ("lists", "strings", "numbers")
INSTRUCTION = "Reply with the complete function in a ```python code block."
MAX_REDRAWS = 200  # redraws of a training item whose instance is held out (or whose tests are not discriminative)


class GeneratorError(AssertionError):
    """A generated task is wrong: its reference solution fails its own tests (a bug here, never the user's)."""


@dataclass(frozen=True)
class CodeTaskConfig:
    families: tuple[str, ...] = FAMILIES
    min_ops: int = 1  # list pipelines: stages among keep / transform / reduce
    max_ops: int = 2
    shown_examples: int = 2
    hidden_tests: int = 6
    edge_cases: bool = True
    max_len: int = 6  # list length / words per string
    max_value: int = 9  # list entries in [-max_value, max_value]

    @classmethod
    def from_dict(cls, raw: dict) -> CodeTaskConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"data.task_config: unknown code_tasks key(s) {unknown}; valid: {sorted(known)}")
        values = dict(raw)
        if "families" in values:
            fam = values["families"]
            if isinstance(fam, str) or not isinstance(fam, (list, tuple)) or not fam or any(f not in FAMILIES for f in fam):
                raise UserError(f"data.task_config.families: a non-empty list from {list(FAMILIES)}, got {fam!r}")
            values["families"] = tuple(fam)
        cfg = cls(**values)
        ints = {"min_ops": (1, 3), "max_ops": (1, 3), "shown_examples": (1, 5), "hidden_tests": (2, 20), "max_len": (2, 12), "max_value": (3, 99)}
        for name, (lo, hi) in ints.items():
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise UserError(f"data.task_config.{name}: an integer in [{lo}, {hi}], got {v!r}")
        if cfg.min_ops > cfg.max_ops:
            raise UserError(f"data.task_config: min_ops ({cfg.min_ops}) > max_ops ({cfg.max_ops})")
        if not isinstance(cfg.edge_cases, bool):
            raise UserError(f"data.task_config.edge_cases: true or false, got {cfg.edge_cases!r}")
        return cfg


@dataclass
class Spec:
    """One task instance: what the function must do, before any test input is drawn."""

    family: str
    instance: str  # canonical identity of the specification (held-out disjointness key)
    name: str  # function name
    arg: str  # argument name
    arg_desc: str
    steps: str  # the task in words
    fn: Callable  # the specification, computing expected values
    reference: str  # reference solution source, checked against fn on every test
    inputs: Callable[[random.Random], object]  # one regular test input
    edges: Callable[[random.Random], list]  # edge inputs (empty, zero, negative...): all among the hidden tests with edge_cases
    probe: Callable[[random.Random], object]  # wider inputs, searched for tests that reject the mutants
    mutants: tuple[Callable, ...] = ()  # near-miss specifications (a stage dropped, a bound off by one) the hidden tests must reject


# --- lists -----------------------------------------------------------------------------------

def _keeps(rng: random.Random):
    k = rng.randint(-3, 5)
    d = rng.randint(3, 5)
    return rng.choice([
        ("even", "the even numbers", "x % 2 == 0", lambda x: x % 2 == 0, None),
        ("odd", "the odd numbers", "x % 2 != 0", lambda x: x % 2 != 0, None),
        ("positive", "the positive numbers", "x > 0", lambda x: x > 0, lambda x: x >= 0),
        ("negative", "the negative numbers", "x < 0", lambda x: x < 0, lambda x: x <= 0),
        (f"above_{k}".replace("-", "minus_"), f"the numbers greater than {k}", f"x > {k}", lambda x, k=k: x > k, lambda x, k=k: x >= k),
        (f"below_{k}".replace("-", "minus_"), f"the numbers less than {k}", f"x < {k}", lambda x, k=k: x < k, lambda x, k=k: x <= k),
        (f"multiples_of_{d}", f"the numbers divisible by {d}", f"x % {d} == 0", lambda x, d=d: x % d == 0, None),
    ])  # (name part, words, condition source, predicate, the predicate with its bound included: a near miss)


def _transforms(rng: random.Random):
    m = rng.randint(2, 4)
    a = rng.randint(1, 9)
    return rng.choice([
        ("squared", "square each of them", "x * x", lambda x: x * x),
        (f"times_{m}", f"multiply each of them by {m}", f"x * {m}", lambda x, m=m: x * m),
        (f"plus_{a}", f"add {a} to each of them", f"x + {a}", lambda x, a=a: x + a),
        ("negated", "negate each of them", "-x", lambda x: -x),
        ("absolute", "take the absolute value of each of them", "abs(x)", abs),
    ])


# (name, words, reference body given the generator expression `gen`, spec on a list)
_REDUCES = {
    "sum": ("sum", "return their sum (0 if there are none)", "return sum({gen})", sum),
    "count": ("count", "return how many there are", "return len([{gen}])", len),
    "max": ("largest", "return the largest of them, or None if there are none", "values = [{gen}]\n    return max(values) if values else None",
            lambda v: max(v) if v else None),
    "min": ("smallest", "return the smallest of them, or None if there are none", "values = [{gen}]\n    return min(values) if values else None",
            lambda v: min(v) if v else None),
    "product": ("product", "return their product (1 if there are none)", "result = 1\n    for v in [{gen}]:\n        result *= v\n    return result",
                lambda v: _product(v)),
    "list": ("list", "return them as a list, in their original order", "return [{gen}]", list),
}


def _product(values) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def _list_spec(rng: random.Random, cfg: CodeTaskConfig) -> Spec:
    ops = rng.randint(cfg.min_ops, cfg.max_ops)
    # stages: keep (k), transform (t), reduce other than `list` (r); the list reduce counts as no stage
    shapes = {1: ["k", "t", "r"], 2: ["kt", "kr", "tr"], 3: ["ktr"]}[ops]
    shape = rng.choice(shapes)
    keep = _keeps(rng) if "k" in shape else None
    transform = _transforms(rng) if "t" in shape else None
    if "r" in shape:
        reduce_key = rng.choice(["sum", "count", "max", "min", "product"] if keep else ["sum", "max", "min", "product"])
        if transform and reduce_key == "count":
            reduce_key = "sum"  # counting ignores the transform
    else:
        reduce_key = "list"
    r_name, r_words, r_body, r_fn = _REDUCES[reduce_key]
    steps = [f"Take {keep[1]} in xs" if keep else "Take the numbers in xs"]
    if transform:
        steps.append(transform[1])
    steps.append(r_words)
    words = ", ".join(steps[:-1]) + ", and " + steps[-1] + "."
    words = words[0].upper() + words[1:]
    expr = transform[2] if transform else "x"
    cond = f" if {keep[2]}" if keep else ""
    gen = f"{expr} for x in xs{cond}"
    parts = [r_name if reduce_key != "list" else "keep" if not transform else "", transform[0] if transform else "", keep[0] if keep else ""]
    name = "_".join(p for p in parts if p) + ("" if keep else "_all" if reduce_key == "list" else "_of_list")
    k_fn = keep[3] if keep else (lambda x: True)
    t_fn = transform[3] if transform else (lambda x: x)
    instance = f"lists|{keep[2] if keep else '-'}|{expr}|{reduce_key}"

    def pipeline(k_fn=k_fn, t_fn=t_fn, r_fn=r_fn):
        return lambda xs: r_fn([t_fn(x) for x in xs if k_fn(x)])

    mutants = []
    if keep:
        mutants.append(pipeline(k_fn=lambda x: True))  # the keep stage ignored
        if keep[4]:
            mutants.append(pipeline(k_fn=keep[4]))  # > for >= (or < for <=)
    if transform:
        mutants.append(pipeline(t_fn=lambda x: x))  # the transform ignored
    if reduce_key in ("max", "min"):
        mutants.append(pipeline(r_fn=_REDUCES["min" if reduce_key == "max" else "max"][3]))
    reference = f"def {name}(xs):\n    {r_body.format(gen=gen)}\n"
    mv = cfg.max_value

    def inputs(rng: random.Random):
        return [rng.randint(-mv, mv) for _ in range(rng.randint(2, cfg.max_len))]

    def probe(rng: random.Random):  # lists from a random sub-range: all positive, all negative, near a bound...
        lo = rng.randint(-mv, mv)
        hi = rng.randint(lo, mv)
        return [rng.randint(lo, hi) for _ in range(rng.randint(1, cfg.max_len))]

    return Spec("lists", instance, name, "xs", "a list of integers", words, pipeline(), reference, inputs,
                edges=lambda rng: [[], [0], [rng.randint(-mv, mv)]], probe=probe, mutants=tuple(mutants))


# --- strings ---------------------------------------------------------------------------------

WORDS = ("apple", "banana", "cat", "dog", "echo", "level", "moon", "noon", "red", "sun", "tree", "wave", "idea", "ocean", "queue", "radar",
         "kayak", "stats", "hello", "world", "python", "code", "data", "list", "open", "under", "sky", "zoo")
PALINDROMES = ("level", "noon", "radar", "kayak", "stats", "racecar", "a", "abba", "refer", "civic")
LETTERS = "aeinorstu"


def _string_spec(rng: random.Random, cfg: CodeTaskConfig) -> Spec:
    c = rng.choice(LETTERS)
    b = rng.choice([ch for ch in "xyz-*" if ch != c])
    b2 = rng.choice([ch for ch in LETTERS if ch != c])
    p = rng.choice(["a", "b", "c", "d", "e", "h", "l", "o", "s", "t"])
    w = rng.randint(1, 3)
    options = [
        (f"upper_{c}", f"Return s with every '{c}' changed to upper case (other characters unchanged).",
         f"return s.replace({c!r}, {c.upper()!r})", lambda s, c=c: s.replace(c, c.upper()), f"upper:{c}"),
        ("reverse_string", "Return s reversed (its characters in the opposite order).", "return s[::-1]", lambda s: s[::-1], "reverse"),
        (f"count_{c}", f"Return how many times the letter '{c}' appears in s.", f"return s.count({c!r})", lambda s, c=c: s.count(c), f"count:{c}"),
        (f"count_{c}_or_{b2}", f"Return how many characters of s are '{c}' or '{b2}'.", f"return sum(1 for ch in s if ch in {c + b2!r})",
         lambda s, c=c, b2=b2: sum(1 for ch in s if ch in c + b2), f"count2:{''.join(sorted(c + b2))}"),
        (f"remove_{c}", f"Return s with every '{c}' removed.", f"return s.replace({c!r}, '')", lambda s, c=c: s.replace(c, ""), f"remove:{c}"),
        (f"replace_{c}", f"Return s with every '{c}' replaced by '{b}'.", f"return s.replace({c!r}, {b!r})",
         lambda s, c=c, b=b: s.replace(c, b), f"replace:{c}:{b}"),
        (f"word_{w}", f"Return word number {w} of s (counting from 1; words are separated by spaces), or '' if s has fewer words.",
         f"words = s.split()\n    return words[{w - 1}] if len(words) >= {w} else ''",
         lambda s, w=w: s.split()[w - 1] if len(s.split()) >= w else "", f"word:{w}"),
        ("last_word", "Return the last word of s (words are separated by spaces), or '' if s has no words.",
         "words = s.split()\n    return words[-1] if words else ''", lambda s: s.split()[-1] if s.split() else "", "last_word"),
        ("reverse_words", "Return s with its words (separated by single spaces) in the opposite order, joined by single spaces.",
         "return ' '.join(s.split()[::-1])", lambda s: " ".join(s.split()[::-1]), "reverse_words"),
        (f"count_words_longer_than_{w + 1}", f"Return how many words of s have more than {w + 1} letters (words are separated by spaces).",
         f"return len([w for w in s.split() if len(w) > {w + 1}])", lambda s, w=w: len([x for x in s.split() if len(x) > w + 1]),
         f"count_long:{w + 1}"),
        ("word_lengths", "Return a list with the length of each word of s, in order (words are separated by spaces).",
         "return [len(w) for w in s.split()]", lambda s: [len(w) for w in s.split()], "word_lengths"),
        ("is_palindrome", "Return True if s reads the same forwards and backwards, else False.", "return s == s[::-1]",
         lambda s: s == s[::-1], "palindrome"),
        (f"starts_with_{p}", f"Return True if s starts with the letter '{p}', else False.", f"return s.startswith({p!r})",
         lambda s, p=p: s.startswith(p), f"starts:{p}"),
        (f"ends_with_{p}", f"Return True if s ends with the letter '{p}', else False.", f"return s.endswith({p!r})",
         lambda s, p=p: s.endswith(p), f"ends:{p}"),
        (f"repeat_letters_{w + 1}", f"Return s with every character repeated {w + 1} times (for example 'ab' becomes '{'a' * (w + 1)}{'b' * (w + 1)}').",
         f"return ''.join(ch * {w + 1} for ch in s)", lambda s, w=w: "".join(ch * (w + 1) for ch in s), f"repeat:{w + 1}"),
        ("longest_word", "Return the longest word of s (the first one if several are equally long), or '' if s has no words.",
         "words = s.split()\n    return max(words, key=len) if words else ''", lambda s: max(s.split(), key=len) if s.split() else "", "longest"),
    ]
    name, steps, body, fn, key = rng.choice(options)
    one_word = key in ("palindrome", "reverse") or key.startswith("repeat")
    nth = lambda s, i: s.split()[i] if 0 <= i < len(s.split()) else ""  # noqa: E731
    mutants = {
        f"word:{w}": (lambda s, w=w: nth(s, w - 2), lambda s, w=w: nth(s, w)),  # off by one
        f"count2:{''.join(sorted(c + b2))}": (lambda s, c=c: s.count(c), lambda s, b2=b2: s.count(b2)),
        "longest": (lambda s: max(reversed(s.split()), key=len) if s.split() else "",),  # the last of the longest
        f"repeat:{w + 1}": (lambda s, w=w: "".join(ch * w for ch in s), lambda s, w=w: "".join(ch * (w + 2) for ch in s)),
        "reverse_words": (lambda s: s[::-1],),
        f"upper:{c}": (str.upper,),
        f"count_long:{w + 1}": (lambda s, w=w: len([x for x in s.split() if len(x) >= w + 1]),),
    }.get(key, ())

    def inputs(rng: random.Random):
        if key == "palindrome" and rng.random() < 0.5:
            return rng.choice(PALINDROMES)
        if one_word:
            return rng.choice(WORDS)
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max(2, cfg.max_len - 2))))

    def probe(rng: random.Random):
        return " ".join(rng.choice(WORDS + PALINDROMES) for _ in range(rng.randint(1, 5)))

    reference = f"def {name}(s):\n    {body}\n"
    return Spec("strings", f"strings|{key}", name, "s", "a string", steps, fn, reference, inputs,
                edges=lambda rng: ["", rng.choice(WORDS)], probe=probe, mutants=mutants)


# --- numbers ---------------------------------------------------------------------------------

def _number_spec(rng: random.Random, cfg: CodeTaskConfig) -> Spec:
    k = rng.randint(2, 7)
    a, b = rng.sample([2, 3, 4, 5, 7], 2)
    lo = rng.randint(-5, 2)
    hi = lo + rng.randint(3, 10)
    options = [
        ("sum_up_to", "Return the sum of the integers from 1 to n (0 if n is less than 1).",
         "return sum(range(1, n + 1))", lambda n: sum(range(1, n + 1)), "sum_to"),
        ("factorial", "Return n factorial (1 * 2 * ... * n; 1 when n is 0 or less).",
         "result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result", _factorial, "factorial"),
        ("digit_sum", "Return the sum of the decimal digits of n (ignore a minus sign).", "return sum(int(d) for d in str(abs(n)))",
         lambda n: sum(int(d) for d in str(abs(n))), "digit_sum"),
        ("count_digits", "Return how many decimal digits n has (ignore a minus sign; 0 has one digit).", "return len(str(abs(n)))",
         lambda n: len(str(abs(n))), "count_digits"),
        (f"sum_multiples_of_{k}", f"Return the sum of the numbers from 0 up to, but not including, n that are divisible by {k}.",
         f"return sum(i for i in range(n) if i % {k} == 0)", lambda n, k=k: sum(i for i in range(n) if i % k == 0), f"multiples:{k}"),
        ("fizz_buzz", f"Return 'FizzBuzz' if n is divisible by both {a} and {b}, 'Fizz' if only by {a}, 'Buzz' if only by {b}, "
         "otherwise n as a string.",
         f"if n % {a} == 0 and n % {b} == 0:\n        return 'FizzBuzz'\n    if n % {a} == 0:\n        return 'Fizz'\n"
         f"    if n % {b} == 0:\n        return 'Buzz'\n    return str(n)",
         lambda n, a=a, b=b: "FizzBuzz" if n % a == 0 and n % b == 0 else "Fizz" if n % a == 0 else "Buzz" if n % b == 0 else str(n),
         f"fizzbuzz:{a}:{b}"),
        ("sign_word", "Return 'positive' if n is greater than 0, 'negative' if it is less than 0, and 'zero' otherwise.",
         "if n > 0:\n        return 'positive'\n    if n < 0:\n        return 'negative'\n    return 'zero'",
         lambda n: "positive" if n > 0 else "negative" if n < 0 else "zero", "sign"),
        ("clamp", f"Return n limited to the range {lo} to {hi}: {lo} if n is less than {lo}, {hi} if n is greater than {hi}, else n.",
         f"return max({lo}, min({hi}, n))", lambda n, lo=lo, hi=hi: max(lo, min(hi, n)), f"clamp:{lo}:{hi}"),
        (f"count_multiples_of_{k}", f"Return how many of the numbers from 1 to n are divisible by {k} (0 if n is less than 1).",
         f"return len([i for i in range(1, n + 1) if i % {k} == 0])", lambda n, k=k: len([i for i in range(1, n + 1) if i % k == 0]),
         f"count_multiples:{k}"),
    ]
    name, steps, body, fn, key = rng.choice(options)
    mutants = {
        "sum_to": (lambda n: sum(range(1, n)), lambda n: n * (n + 1) // 2),  # exclusive bound; the formula below 1
        "factorial": (lambda n: _factorial(n - 1), lambda n: _factorial(n) if n >= 0 else 0),
        f"multiples:{k}": (lambda n, k=k: sum(i for i in range(n + 1) if i % k == 0),),  # n included
        f"count_multiples:{k}": (lambda n, k=k: len([i for i in range(1, n) if i % k == 0]),
                                 lambda n, k=k: len([i for i in range(0, n + 1) if i % k == 0])),
        f"fizzbuzz:{a}:{b}": (lambda n, a=a, b=b: "Fizz" if n % a == 0 else "Buzz" if n % b == 0 else str(n),),  # never FizzBuzz
        f"clamp:{lo}:{hi}": (lambda n: n, lambda n, lo=lo, hi=hi: max(lo, n), lambda n, lo=lo, hi=hi: min(hi, n)),
        "count_digits": (lambda n: len(str(n)),),  # the minus sign counted
    }.get(key, ())

    def inputs(rng: random.Random):
        if key == "factorial":
            return rng.randint(1, 10)
        if key in ("digit_sum", "count_digits"):
            return rng.randint(-99999, 99999)
        if key.startswith("clamp"):
            return rng.randint(lo - 6, hi + 6)
        return rng.randint(1, 40)

    def probe(rng: random.Random):
        return rng.randint(-10, 15) if key == "factorial" else rng.randint(lo - 8, hi + 8) if key.startswith("clamp") else rng.randint(-30, 60)

    reference = f"def {name}(n):\n    {body}\n"
    return Spec("numbers", f"numbers|{key}", name, "n", "an integer", steps, fn, reference, inputs,
                edges=lambda rng: [0, -rng.randint(1, 9), 1], probe=probe, mutants=mutants)


def _factorial(n: int) -> int:
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result


SPEC_BUILDERS = {"lists": _list_spec, "strings": _string_spec, "numbers": _number_spec}


# --- tasks -----------------------------------------------------------------------------------

def draw_spec(rng: random.Random, cfg: CodeTaskConfig) -> Spec:
    return SPEC_BUILDERS[rng.choice(cfg.families)](rng, cfg)


def draw_tests(spec: Spec, rng: random.Random, cfg: CodeTaskConfig) -> tuple[list, list] | None:
    """(shown inputs, hidden inputs), all calls distinct: the edge inputs first among the hidden
    ones (edge_cases), then regular inputs, some swapped for probe inputs until every mutant the
    probes can tell apart fails a hidden test. None when no such set with >= 2 distinct hidden
    expected values was found."""
    edges = _distinct(spec.edges(rng))[: cfg.hidden_tests - 1] if cfg.edge_cases else []
    for _ in range(20):
        seen, shown, hidden = {repr(x) for x in edges}, [], list(edges)
        for _ in range(400):
            if len(shown) + len(hidden) >= cfg.shown_examples + cfg.hidden_tests:
                break
            x = spec.inputs(rng)
            if repr(x) not in seen:
                seen.add(repr(x))
                (shown if len(shown) < cfg.shown_examples else hidden).append(x)
        if len(hidden) < cfg.hidden_tests or len(shown) < cfg.shown_examples:
            continue
        hidden = _reject_mutants(spec, rng, seen, hidden, fixed=len(edges))
        if hidden is not None and len({repr(spec.fn(x)) for x in hidden}) >= 2:  # no constant passes the hidden tests
            return shown, hidden
    return None


def _distinct(xs: list) -> list:
    out, seen = [], set()
    for x in xs:
        if repr(x) not in seen:
            seen.add(repr(x))
            out.append(x)
    return out


def differs(mutant: Callable, fn: Callable, x) -> bool:
    """Does the near-miss specification give another value than the specification on x? (Raising counts.)"""
    try:
        got = mutant(_copy(x))
    except Exception:  # noqa: BLE001 - a near miss that crashes is told apart
        return True
    want = fn(_copy(x))
    return type(got) is not type(want) or got != want


def _reject_mutants(spec: Spec, rng: random.Random, seen: set, hidden: list, fixed: int, probes: int = 300) -> list | None:
    """Hidden inputs such that every mutant some probe input tells apart fails one of them: a
    regular input (never one of the first `fixed`, the edges) is swapped for a probe that does."""
    hidden = list(hidden)
    pool = [spec.probe(rng) for _ in range(probes)] if spec.mutants else []
    kept = set(range(fixed))  # inputs that must stay: the edges and those rejecting an earlier mutant
    for mutant in spec.mutants:
        hit = next((i for i, x in enumerate(hidden) if differs(mutant, spec.fn, x)), None)
        if hit is None:
            x = next((x for x in pool if repr(x) not in seen and differs(mutant, spec.fn, x)), None)
            if x is None:
                continue  # no input we draw tells it apart: equivalent here
            free = [i for i in range(len(hidden)) if i not in kept]
            if not free:
                return None
            hit = free[0]
            seen.add(repr(x))
            hidden[hit] = x
        kept.add(hit)
    return hidden


def check_reference(spec: Spec, inputs: list) -> None:
    """Run the reference solution on every input and compare with the specification."""
    namespace: dict = {}
    exec(compile(spec.reference, f"<reference {spec.instance}>", "exec"), namespace)  # our own generated source
    solution = namespace[spec.name]
    for x in inputs:
        got, want = solution(_copy(x)), spec.fn(_copy(x))
        if type(got) is not type(want) or got != want:
            raise GeneratorError(f"code_tasks: reference for {spec.instance} returns {got!r} on {x!r}, the specification {want!r}")


def _copy(x):
    return list(x) if isinstance(x, list) else x


def make_task(spec: Spec, shown: list, hidden: list) -> dict:
    check_reference(spec, shown + hidden)
    call = lambda x: f"{spec.name}({x!r})"  # noqa: E731
    examples = "\n".join(f"{call(x)} == {spec.fn(x)!r}" for x in shown)
    question = (f"Write a Python function `{spec.name}({spec.arg})` where {spec.arg} is {spec.arg_desc}. {spec.steps}\n\n"
                f"Examples:\n{examples}\n\n{INSTRUCTION}")
    tests = [{"call": call(x), "expected": spec.fn(x)} for x in shown + hidden]
    return {
        "question": question,
        "answer": spec.reference,  # the reference solution, for reports (the code reward reads `tests`)
        "tests": tests,
        "entry_point": spec.name,
        "instance": spec.instance,
        "family": spec.family,
        "shown_tests": len(shown),
    }


class CodeTasks(Sequence):
    """Lazy, seeded sequence of tasks: item i depends only on (seed, i, config, excluded instances)."""

    def __init__(self, cfg: CodeTaskConfig, seed: int, size: int, exclude: frozenset[str] = frozenset()):
        self.cfg, self.seed, self.size, self.exclude = cfg, seed, size, exclude
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.size))]
        if not -self.size <= i < self.size:
            raise IndexError(i)
        i %= self.size
        if i not in self._cache:
            self._cache[i] = self._generate(i)
        return self._cache[i]

    def _generate(self, i: int) -> dict:
        for redraw in range(MAX_REDRAWS):
            rng = random.Random(f"code_tasks:{self.seed}:{i}:{redraw}")
            spec = draw_spec(rng, self.cfg)
            if spec.instance in self.exclude:
                continue
            drawn = draw_tests(spec, rng, self.cfg)
            if drawn is not None:
                return make_task(spec, *drawn)
        raise UserError(f"data.task_config: no task instance outside the held-out set after {MAX_REDRAWS} draws; "
                        "widen the families or shrink data.eval_size")


def code_task_splits(task_config: dict, seed: int, train_size: int, eval_size: int, held_out_seed: int) -> tuple[CodeTasks, list[dict]]:
    """(training tasks, held-out tasks): no training task shares an instance with a held-out one."""
    cfg = CodeTaskConfig.from_dict(task_config)
    held_out = list(CodeTasks(cfg, held_out_seed, eval_size))
    excluded = frozenset(t["instance"] for t in held_out)
    return CodeTasks(cfg, seed, train_size, excluded), held_out


def stress_tests(task: dict, count: int = 100, seed: int = 0, max_len: int = 8, max_value: int = 9) -> list[dict]:
    """`count` more tests for a generated task, expected values from its reference solution: lists
    drawn from random sub-ranges (all positive, all negative, near a threshold, empty), strings of
    0-5 words (palindromes among them), integers from -30 to 60. For auditing a reward (does a
    passing program also pass these?), not for training: the 8 tests a task carries are the reward."""
    rng = random.Random(f"stress:{seed}:{task['instance']}:{task['question']}")
    namespace: dict = {}
    exec(compile(task["answer"], "<reference>", "exec"), namespace)  # our own generated source
    reference = namespace[task["entry_point"]]
    seen, tests = {t["call"] for t in task["tests"]}, []
    for _ in range(count * 20):
        if len(tests) >= count:
            break
        if task["family"] == "lists":
            lo = rng.randint(-max_value, max_value)
            hi = rng.randint(lo, max_value)
            x = [rng.randint(lo, hi) for _ in range(rng.randint(0, max_len))]
        elif task["family"] == "strings":
            x = " ".join(rng.choice(WORDS + PALINDROMES) for _ in range(rng.randint(0, 5)))
        else:
            x = rng.randint(-30, 60)
        call = f"{task['entry_point']}({x!r})"
        if call not in seen:
            seen.add(call)
            tests.append({"call": call, "expected": reference(_copy(x))})
    return tests


def instance_count(task_config: dict, draws: int = 20_000, seed: int = 0) -> int:
    """Distinct instances among `draws` specifications (how large the task space is)."""
    cfg = CodeTaskConfig.from_dict(task_config)
    rng = random.Random(seed)
    return len({draw_spec(rng, cfg).instance for _ in range(draws)})
