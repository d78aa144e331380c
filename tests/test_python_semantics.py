"""celeriac.test.add, mul and xsum are Python's `x + y`, `x * y` and `sum(numbers)` on what JSON
carries. Each case runs through the Python function itself, here, and through celeriac-worker
(`app.send_task(...).get()`); both must give the same result (type and value, and the same JSON
text in the result record) or raise the same exception (type and message)."""

import json
import re
import sys

import kombu.exceptions
import kombu.serialization
import pytest

from support import meta


def add(x, y):
    return x + y


def mul(x, y):
    return x * y


def xsum(numbers):
    return sum(numbers)


PY = {"celeriac.test.add": add, "celeriac.test.mul": mul, "celeriac.test.xsum": xsum}
BIG = 2**70 + 1
# The smallest int float() refuses: 2**1024 - 2**970 rounds up to 2**1024.
EDGE = 2**1024 - 2**970
I64_MAX, I64_MIN = 2**63 - 1, -(2**63)

ADD = [
    # ints, bools (which are ints), and ints past 64 bits
    (2, 3), (True, 1), (True, True), (False, False), (I64_MAX, 1), (I64_MIN, -1), (2**64, 1),
    (BIG, 1), (BIG, -BIG), (-BIG, True), (EDGE, EDGE),
    # floats, with ints mixed in, and how json.dumps writes them
    (2.5, 3), (True, 2.5), (BIG, 0.5), (0.1, 0.2), (1e15, 0), (1e16, 1), (0.0001, 0), (0.00001, 0),
    (-0.0, -0.0), (-0.0, 0), (9007199254740993, 0.0), (EDGE - 1, 0.0), (1.5e300, 1e299),
    (EDGE, 0.0), (0.5, EDGE),
    # strings and lists concatenate
    ("ab", "cd"), ("", "é"), ([1, "a"], [None, {"k": [2]}]), ([], []),
    # and everything else is a TypeError
    (1, "a"), (True, "a"), (2.5, []), (1, None), ("a", 1), ("a", None), ("a", ["a"]), ("a", 2.5),
    ([1], 1), ([1], "a"), ([1], {}), (None, 1), (None, None), ({}, {}), ({"a": 1}, 1), ({}, []),
]
MUL = [
    (6, 7), (BIG, BIG), (I64_MIN, -1), (2**32, 2**32), (BIG, 0), (True, False), (-3, BIG),
    (True, 2.5), (0.1, 3), (-1, 0.0), (2.5, BIG), (EDGE, 1.0), (1e200, 1e-200),
    # repetition: str * int, int * str, list * int; zero or negative counts give empty
    ("ab", 3), (3, "ab"), ("ab", True), ("ab", False), ("ab", 0), ("ab", -2), ([1, [2]], 2),
    (2, [1]), ([1], -1), (False, [1]), ("", 2**62), ([], 2**62), ("a", I64_MIN),
    # counts past a C ssize_t, lengths past it, and allocations that fail
    ("a", 2**63), ("a", I64_MIN - 1), ("", BIG), ([], BIG), (BIG, "a"), ("abc", 2**62),
    ("ab", 2**62), ([1], 2**62), ("a", 2**62), ([1, 2], 2**62),
    # TypeErrors
    ("a", "b"), ("a", 2.0), (2.0, "a"), ("a", None), (None, "a"), ([1], [1]), ([1], "a"),
    ({}, "a"), ("a", {}), (None, 2), (2, None), ({}, 2), (2.5, {}), (None, None),
]
XSUM = [
    [1, 2, 3.5], [], [True, True], [2**64, 2**64], [BIG, -1], [1, 2**64, 0.5], [1e308, -1e308, 0.5],
    [EDGE, 0.5], [1.5, "a"], "", {}, "ab", {"a": 1}, ["a", "b"], [[1], [2]], [1, None], [{}],
    5, 2.5, True, None,
]
if sys.version_info < (3, 12):
    # Up to 3.11 sum() adds floats one by one, as celeriac does: 0.9999999999999999. CPython 3.12
    # compensates the rounding and gives 1.0.
    XSUM.append([0.1] * 10)
CASES = (
    [("celeriac.test.add", args) for args in ADD]
    + [("celeriac.test.mul", args) for args in MUL]
    + [("celeriac.test.xsum", (numbers,)) for numbers in XSUM]
)


def python_outcome(task, args):
    """What a Python worker stores for the call: the return value, or the exception raised by
    the task or by kombu's JSON encoder (`EncodeError`, with the encoder's exception's repr as
    its message, as Celery stores `exc.args`)."""
    try:
        value = PY[task](*args)
    except Exception as e:  # noqa: BLE001 - any exception is an outcome to compare
        return None, e, str(e)
    try:
        kombu.serialization.dumps(value, serializer="json")
    except kombu.exceptions.EncodeError as e:
        return None, e, repr(e.args[0])
    return value, None, None


def stored_result_text(backend, task_id):
    """The `result` field of the record exactly as written (celeriac writes compact JSON)."""
    raw = backend.get(f"celery-task-meta-{task_id}").decode()
    m = re.search(r'"result":(.*?),"traceback":', raw)
    assert m, raw
    return m.group(1)


def call(task, args):
    return f"{task.rsplit('.', 1)[1]}{tuple(args)!r}"[:200]


@pytest.mark.once
def test_add_mul_and_xsum_give_what_python_gives(app, backend, start_worker):
    start_worker("--concurrency", "16")
    sent = [(task, args, app.send_task(task, args=list(args))) for task, args in CASES]
    for task, args, r in sent:
        value, exc, message = python_outcome(task, args)
        what = call(task, args)
        if exc is not None:
            with pytest.raises(type(exc), match=f"^{re.escape(message)}$"):
                r.get(timeout=10)
            continue
        got = r.get(timeout=10)
        assert type(got) is type(value), what
        if isinstance(value, float):
            assert repr(got) == repr(value), what  # also tells -0.0 from 0.0
        else:
            assert got == value, what
        if isinstance(value, (int, float)):
            # The record holds the number as json.dumps writes it: every digit of a big int,
            # floats as repr() writes them (1e+16, 1e-05).
            assert stored_result_text(backend, r.id) == json.dumps(value), what


@pytest.mark.once
def test_keyword_arguments_follow_the_same_rules(app, start_worker):
    start_worker()
    assert app.send_task("celeriac.test.add", kwargs={"x": BIG, "y": BIG}).get(timeout=5) == 2 * BIG
    assert app.send_task("celeriac.test.mul", args=["ab"], kwargs={"y": 2}).get(timeout=5) == "abab"
    assert app.send_task("celeriac.test.xsum", kwargs={"numbers": [BIG, 0.5]}).get(timeout=5) == BIG + 0.5
    with pytest.raises(TypeError, match=re.escape("can only concatenate list (not \"int\") to list")):
        app.send_task("celeriac.test.add", kwargs={"y": 1, "x": [1]}).get(timeout=5)


@pytest.mark.once
def test_an_infinite_float_is_stored_as_the_encoding_error_it_is(app, backend, start_worker):
    """Python's worker stores float('inf') as the token `Infinity`, which is not JSON; celeriac
    stores the EncodeError a Python worker stores for a result its JSON encoder refuses."""
    assert mul(1e308, 10) == float("inf")
    assert kombu.serialization.dumps(float("inf"), serializer="json")[2] == "Infinity"
    start_worker()
    message = "ValueError('Out of range float values are not JSON compliant')"
    for task, args in [("celeriac.test.mul", [1e308, 10]), ("celeriac.test.add", [-1e308, -1e308]),
                       ("celeriac.test.xsum", [[1e308, 1e308]])]:
        r = app.send_task(task, args=args)
        with pytest.raises(kombu.exceptions.EncodeError, match=f"^{re.escape(message)}$"):
            r.get(timeout=5)
        assert meta(backend, r.id)["result"] == {
            "exc_type": "EncodeError", "exc_message": [message], "exc_module": "kombu.exceptions"}


@pytest.mark.once
def test_an_int_result_past_pythons_digit_limit_fails_as_on_a_python_worker(app, start_worker):
    start_worker()
    x = 10**2200
    _, exc, message = python_outcome("celeriac.test.mul", (x, x))
    assert isinstance(exc, kombu.exceptions.EncodeError)
    with pytest.raises(kombu.exceptions.EncodeError, match=f"^{re.escape(message)}$"):
        app.send_task("celeriac.test.mul", args=[x, x]).get(timeout=5)


@pytest.mark.once
def test_a_repetition_past_64_mib_is_a_memory_error(app, start_worker):
    """Where Python would allocate it, celeriac refuses a result that large (MemoryError, as
    Python raises when it cannot allocate)."""
    start_worker()
    with pytest.raises(MemoryError, match="^$"):
        app.send_task("celeriac.test.mul", args=["ab", 32 * 2**20 + 1]).get(timeout=5)
    assert len(app.send_task("celeriac.test.mul", args=["ab", 2**20]).get(timeout=5)) == 2**21
