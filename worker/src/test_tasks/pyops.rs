//! Python's `+`, `*` and `sum()` on the values JSON carries, for `celeriac.test.add`, `mul` and
//! `xsum`: what `def add(x, y): return x + y` (and so on) returns on a Python worker, or the
//! exception it raises, with CPython 3.11's type and message.
//!
//! As `json.loads` reads them, a number without a fraction or exponent is an `int` of any size
//! and any other number a `float`; `true`/`false` are `bool`s, which count as the ints 1 and 0
//! (`True + True == 2`, an `int`). Strings and lists concatenate and repeat, `null` and objects
//! take part in neither operator. `sum()` starts from `0` and adds the items one by one (what
//! CPython up to 3.11 does; 3.12 sums floats with compensation, so `sum([0.1] * 10)` is `1.0`
//! there and `0.9999999999999999` here and on 3.11).
//!
//! Floats are written as `json.dumps` writes them, which is `repr` (`1e+16`, `1e-05`,
//! `0.30000000000000004`). A float result that overflows to infinity cannot be stored: Python's
//! worker writes the non-JSON token `Infinity` into the result record; we store the
//! `kombu.exceptions.EncodeError` a Python worker stores when its encoder refuses a value.
//! Integers follow Python's limit of 4300 decimal digits (`sys.get_int_max_str_digits()`): a
//! longer argument fails with the `ValueError` `json.loads` raises, a longer result with the
//! `EncodeError` a Python worker stores. A repetition past [`MAX_REPEAT_BYTES`] fails with
//! `MemoryError` (Python would try to allocate it).

use std::borrow::Cow;
use std::str::FromStr;

use celeriac_protocol::PyException;
use num_bigint::BigInt;
use serde_json::{Number, Value};

use crate::task_error::PyError;

/// Python's default `sys.get_int_max_str_digits()`.
const MAX_INT_DIGITS: usize = 4300;

/// Largest result a repetition (`"ab" * n`, `[x] * n`) builds, in bytes (estimated for lists):
/// past it the task fails with `MemoryError`, as Python does when it cannot allocate one.
const MAX_REPEAT_BYTES: usize = 64 << 20;

/// An exact Python `int`: machine-sized when it fits.
#[derive(Debug, Clone, PartialEq)]
enum Int {
    Small(i64),
    Big(BigInt),
}

impl Int {
    fn from_big(b: BigInt) -> Self {
        i64::try_from(&b).map_or(Self::Big(b), Self::Small)
    }

    fn big(&self) -> BigInt {
        match self {
            Self::Small(i) => BigInt::from(*i),
            Self::Big(b) => b.clone(),
        }
    }

    fn add(&self, other: &Self) -> Self {
        if let (Self::Small(a), Self::Small(b)) = (self, other)
            && let Some(r) = a.checked_add(*b)
        {
            return Self::Small(r);
        }
        Self::from_big(self.big() + other.big())
    }

    fn mul(&self, other: &Self) -> Self {
        if let (Self::Small(a), Self::Small(b)) = (self, other)
            && let Some(r) = a.checked_mul(*b)
        {
            return Self::Small(r);
        }
        Self::from_big(self.big() * other.big())
    }

    /// `float(self)`: correctly rounded, `OverflowError` past the largest float.
    fn to_float(&self) -> Result<f64, PyError> {
        let f = match self {
            // `as` rounds to nearest, ties to even, as CPython does.
            Self::Small(i) => *i as f64,
            // Rust's float parsing is correctly rounded too, and overflows to infinity.
            Self::Big(b) => b.to_string().parse::<f64>().unwrap_or(f64::INFINITY),
        };
        if f.is_finite() {
            Ok(f)
        } else {
            Err(PyError::builtin(
                "OverflowError",
                "int too large to convert to float",
            ))
        }
    }

    fn to_value(&self) -> Result<Value, PyError> {
        let b = match self {
            Self::Small(i) => return Ok(Value::from(*i)),
            Self::Big(b) => b,
        };
        let text = b.to_string();
        if text.trim_start_matches('-').len() > MAX_INT_DIGITS {
            return Err(encode_error(&format!(
                "ValueError('Exceeds the limit ({MAX_INT_DIGITS} digits) for integer string \
                 conversion; use sys.set_int_max_str_digits() to increase the limit')"
            )));
        }
        // serde_json keeps the digits only with its `arbitrary_precision` feature (on in this
        // workspace); without it the number would become a float, so fail instead.
        match Number::from_str(&text) {
            Ok(n) if n.to_string() == text => Ok(Value::Number(n)),
            _ => Err(encode_error(&format!(
                "OverflowError('{text} needs serde_json with arbitrary_precision')"
            ))),
        }
    }
}

/// One operand, typed as Python sees it.
#[derive(Debug, Clone, PartialEq)]
enum Py<'a> {
    None,
    Bool(bool),
    Int(Int),
    Float(f64),
    Str(Cow<'a, str>),
    List(&'a [Value]),
    Dict,
}

impl<'a> Py<'a> {
    fn of(v: &'a Value) -> Self {
        match v {
            Value::Null => Self::None,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => number(n),
            Value::String(s) => Self::Str(Cow::Borrowed(s)),
            Value::Array(a) => Self::List(a),
            Value::Object(_) => Self::Dict,
        }
    }

    /// `type(x).__name__`.
    fn type_name(&self) -> &'static str {
        match self {
            Self::None => "NoneType",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int",
            Self::Float(_) => "float",
            Self::Str(_) => "str",
            Self::List(_) => "list",
            Self::Dict => "dict",
        }
    }

    /// The operand as an `int`, for `bool` and `int`.
    fn as_int(&self) -> Option<Int> {
        match self {
            Self::Bool(b) => Some(Int::Small(i64::from(*b))),
            Self::Int(i) => Some(i.clone()),
            _ => None,
        }
    }

    fn is_number(&self) -> bool {
        matches!(self, Self::Bool(_) | Self::Int(_) | Self::Float(_))
    }

    /// The operand as a `float`, for `bool`, `int` and `float` (NaN for the others, which
    /// [`numeric`] never converts).
    fn to_float(&self) -> Result<f64, PyError> {
        match (self, self.as_int()) {
            (Self::Float(f), _) => Ok(*f),
            (_, Some(i)) => i.to_float(),
            _ => Ok(f64::NAN),
        }
    }
}

/// `json.loads`'s reading of a number: `int` when it has no fraction or exponent.
fn number(n: &Number) -> Py<'static> {
    if let Some(i) = n.as_i64() {
        return Py::Int(Int::Small(i));
    }
    let text = n.to_string();
    if !text.contains(['.', 'e', 'E'])
        && let Ok(b) = BigInt::from_str(&text)
    {
        return Py::Int(Int::from_big(b));
    }
    // Any JSON number parses as a float (past the largest, to infinity, as `float()` does).
    Py::Float(text.parse().unwrap_or(f64::NAN))
}

fn type_error(message: String) -> PyError {
    PyError::type_error(message)
}

/// What a Python worker stores when kombu's JSON encoder refuses the result: `EncodeError`
/// wrapping the encoder's exception, whose `repr` is the message.
fn encode_error(repr: &str) -> PyError {
    PyError::new("kombu.exceptions", "EncodeError", repr)
}

fn memory_error() -> PyError {
    PyError {
        exception: PyException::new("builtins", "MemoryError", Vec::new()),
        traceback: None,
    }
}

fn unsupported(op: char, a: &Py<'_>, b: &Py<'_>) -> PyError {
    type_error(format!(
        "unsupported operand type(s) for {op}: '{}' and '{}'",
        a.type_name(),
        b.type_name()
    ))
}

/// A Python `float` as `json.dumps` writes it, or the `EncodeError` for infinity.
fn float_value(f: f64) -> Result<Value, PyError> {
    if !f.is_finite() {
        return Err(encode_error(
            "ValueError('Out of range float values are not JSON compliant')",
        ));
    }
    let text = float_repr(f);
    Ok(Number::from_str(&text).map_or_else(|_| Value::from(f), Value::Number))
}

/// `repr(f)` for a finite float: the shortest digits that read back as `f`, in positional
/// notation when the decimal exponent is in `-4..16`, else as `d.ddde+XX`.
fn float_repr(f: f64) -> String {
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    // `{:e}` finds how many digits the shortest round-tripping form has ("1.2345e-7": 5), but
    // rounds an exact tie up where Python picks the even digit (833212321530332.25 is written
    // ...332.2); formatting to that many digits rounds correctly, ties to even, as Python does.
    let shortest = format!("{:e}", f.abs());
    let len = shortest
        .split('e')
        .next()
        .map_or(1, |m| m.chars().filter(char::is_ascii_digit).count());
    let sci = format!("{:.*e}", len.saturating_sub(1), f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    // The value is 0.DIGITS × 10^point.
    let point = exp + 1;
    if !(-3..=16).contains(&point) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.unsigned_abs());
    }
    let len = digits.len() as i32;
    if point <= 0 {
        let zeros = "0".repeat(point.unsigned_abs() as usize);
        format!("{sign}0.{zeros}{digits}")
    } else if point >= len {
        let zeros = "0".repeat((point - len) as usize);
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    }
}

/// `a + b` or `a * b` when both are numbers (`bool`, `int`, `float`): exact on ints, in floats
/// as soon as one is a float.
fn numeric(
    a: &Py<'_>,
    b: &Py<'_>,
    int: fn(&Int, &Int) -> Int,
    float: fn(f64, f64) -> f64,
) -> Option<Result<Py<'static>, PyError>> {
    if let (Some(x), Some(y)) = (a.as_int(), b.as_int()) {
        return Some(Ok(Py::Int(int(&x, &y))));
    }
    if !(a.is_number() && b.is_number()) {
        return None;
    }
    Some(
        a.to_float()
            .and_then(|x| Ok(Py::Float(float(x, b.to_float()?)))),
    )
}

/// The JSON value of a number [`numeric`] computed.
fn numeric_value(n: Py<'_>) -> Result<Value, PyError> {
    match n {
        Py::Int(i) => i.to_value(),
        Py::Float(f) => float_value(f),
        other => Err(PyError::runtime_error(format!(
            "not a number: {}",
            other.type_name()
        ))),
    }
}

fn py_add(a: &Py<'_>, b: &Py<'_>) -> Result<Value, PyError> {
    if let Some(r) = numeric(a, b, Int::add, |x, y| x + y) {
        return r.and_then(numeric_value);
    }
    match (a, b) {
        (Py::Str(x), Py::Str(y)) => Ok(Value::String(format!("{x}{y}"))),
        (Py::Str(_), other) => Err(type_error(format!(
            "can only concatenate str (not \"{}\") to str",
            other.type_name()
        ))),
        (Py::List(x), Py::List(y)) => Ok(Value::Array(x.iter().chain(y.iter()).cloned().collect())),
        (Py::List(_), other) => Err(type_error(format!(
            "can only concatenate list (not \"{}\") to list",
            other.type_name()
        ))),
        _ => Err(unsupported('+', a, b)),
    }
}

fn py_mul(a: &Py<'_>, b: &Py<'_>) -> Result<Value, PyError> {
    if let Some(r) = numeric(a, b, Int::mul, |x, y| x * y) {
        return r.and_then(numeric_value);
    }
    // The left operand repeats when it is a sequence, else the right one does.
    let (seq, count) = match (a, b) {
        (Py::Str(_) | Py::List(_), _) => (a, b),
        (_, Py::Str(_) | Py::List(_)) => (b, a),
        _ => return Err(unsupported('*', a, b)),
    };
    let Some(count) = count.as_int() else {
        return Err(type_error(format!(
            "can't multiply sequence by non-int of type '{}'",
            count.type_name()
        )));
    };
    let Int::Small(n) = count else {
        return Err(PyError::builtin(
            "OverflowError",
            "cannot fit 'int' into an index-sized integer",
        ));
    };
    match seq {
        Py::Str(s) => repeat_str(s, n),
        Py::List(items) => repeat_list(items, n),
        _ => Err(unsupported('*', a, b)),
    }
}

fn repeat_str(s: &str, n: i64) -> Result<Value, PyError> {
    if n <= 0 || s.is_empty() {
        return Ok(Value::String(String::new()));
    }
    let chars = s.chars().count() as i64;
    if chars > i64::MAX / n {
        return Err(PyError::builtin(
            "OverflowError",
            "repeated string is too long",
        ));
    }
    let n = usize::try_from(n).map_err(|_| memory_error())?;
    match s.len().checked_mul(n) {
        Some(bytes) if bytes <= MAX_REPEAT_BYTES => Ok(Value::String(s.repeat(n))),
        _ => Err(memory_error()),
    }
}

fn repeat_list(items: &[Value], n: i64) -> Result<Value, PyError> {
    if n <= 0 || items.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    let n = usize::try_from(n).map_err(|_| memory_error())?;
    let weight: usize = items.iter().map(weight).sum();
    match weight.checked_mul(n) {
        Some(bytes) if bytes <= MAX_REPEAT_BYTES => {
            let mut out = Vec::with_capacity(items.len() * n);
            for _ in 0..n {
                out.extend_from_slice(items);
            }
            Ok(Value::Array(out))
        }
        _ => Err(memory_error()),
    }
}

/// Roughly the bytes a copy of `v` takes.
fn weight(v: &Value) -> usize {
    const SLOT: usize = std::mem::size_of::<Value>();
    SLOT + match v {
        Value::Null | Value::Bool(_) => 0,
        Value::Number(_) => SLOT,
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(weight).sum(),
        Value::Object(m) => m.iter().map(|(k, v)| SLOT + k.len() + weight(v)).sum(),
    }
}

/// The `ValueError` `json.loads` raises for an integer past Python's digit limit, if one of
/// `values` (at any depth) is.
fn check_int_digits<'v>(values: impl IntoIterator<Item = &'v Value>) -> Result<(), PyError> {
    for v in values {
        match v {
            Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => {
                let text = n.to_string();
                let digits = text.trim_start_matches('-').len();
                if digits > MAX_INT_DIGITS && !text.contains(['.', 'e', 'E']) {
                    return Err(PyError::value_error(format!(
                        "Exceeds the limit ({MAX_INT_DIGITS} digits) for integer string \
                         conversion: value has {digits} digits; use sys.set_int_max_str_digits() \
                         to increase the limit"
                    )));
                }
            }
            Value::Array(a) => check_int_digits(a)?,
            Value::Object(m) => check_int_digits(m.values())?,
            _ => {}
        }
    }
    Ok(())
}

/// `x + y`.
pub(super) fn add(x: &Value, y: &Value) -> Result<Value, PyError> {
    check_int_digits([x, y])?;
    py_add(&Py::of(x), &Py::of(y))
}

/// `x * y`.
pub(super) fn mul(x: &Value, y: &Value) -> Result<Value, PyError> {
    check_int_digits([x, y])?;
    py_mul(&Py::of(x), &Py::of(y))
}

/// `sum(numbers)`: `0 + item + item …` over what iterating `numbers` yields in Python (a
/// list's items, a string's characters, an object's keys).
pub(super) fn sum(numbers: &Value) -> Result<Value, PyError> {
    check_int_digits([numbers])?;
    let items: Box<dyn Iterator<Item = Py<'_>>> = match numbers {
        Value::Array(a) => Box::new(a.iter().map(Py::of)),
        Value::String(s) => Box::new(s.chars().map(|c| Py::Str(Cow::Owned(c.to_string())))),
        Value::Object(m) => Box::new(m.keys().map(|k| Py::Str(Cow::Borrowed(k.as_str())))),
        other => {
            return Err(type_error(format!(
                "'{}' object is not iterable",
                Py::of(other).type_name()
            )));
        }
    };
    let mut acc = Py::Int(Int::Small(0));
    for item in items {
        acc = match numeric(&acc, &item, Int::add, |x, y| x + y) {
            Some(r) => r?,
            // The running total is a number: `total + item` is unsupported.
            None => return Err(unsupported('+', &acc, &item)),
        };
    }
    numeric_value(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_bigint::BigInt;

    /// What Python gives: the result as `json.dumps(r, separators=(",", ":"))` writes it, or
    /// the exception's type and message.
    type Outcome = Result<&'static str, (&'static str, &'static str)>;

    /// Task, arguments (JSON), and what CPython 3.11 gives for them. Every row was produced by
    /// running `x + y`, `x * y` and `sum(numbers)` in Python.
    #[rustfmt::skip]
    const CASES: &[(&str, &str, Outcome)] = &[
        ("add", r#"[2,3]"#, Ok(r#"5"#)),
        ("add", r#"[2.5,3]"#, Ok(r#"5.5"#)),
        ("add", r#"[true,1]"#, Ok(r#"2"#)),
        ("add", r#"[true,true]"#, Ok(r#"2"#)),
        ("add", r#"[false,2.5]"#, Ok(r#"2.5"#)),
        ("add", r#"[9223372036854775807,1]"#, Ok(r#"9223372036854775808"#)),
        ("add", r#"[-9223372036854775808,-1]"#, Ok(r#"-9223372036854775809"#)),
        ("add", r#"[18446744073709551616,1]"#, Ok(r#"18446744073709551617"#)),
        ("add", r#"[1180591620717411303425,1]"#, Ok(r#"1180591620717411303426"#)),
        ("add", r#"[1180591620717411303425,-1180591620717411303425]"#, Ok(r#"0"#)),
        ("add", r#"[1180591620717411303425,0.5]"#, Ok(r#"1.1805916207174113e+21"#)),
        ("add", r#"[0.1,0.2]"#, Ok(r#"0.30000000000000004"#)),
        ("add", r#"[1000000000000000.0,0]"#, Ok(r#"1000000000000000.0"#)),
        ("add", r#"[1e+16,0]"#, Ok(r#"1e+16"#)),
        ("add", r#"[1e+16,1]"#, Ok(r#"1e+16"#)),
        ("add", r#"[0.0001,0]"#, Ok(r#"0.0001"#)),
        ("add", r#"[1e-05,0]"#, Ok(r#"1e-05"#)),
        ("add", r#"[-0.0,-0.0]"#, Ok(r#"-0.0"#)),
        ("add", r#"[-0.0,0]"#, Ok(r#"0.0"#)),
        ("add", r#"[9007199254740993,0.0]"#, Ok(r#"9007199254740992.0"#)),
        ("add", r#"["ab","cd"]"#, Ok(r#""abcd""#)),
        ("add", r#"["","é"]"#, Ok(r#""é""#)),
        ("add", r#"[[1,"a"],[null,{"k":[2]}]]"#, Ok(r#"[1,"a",null,{"k":[2]}]"#)),
        ("add", r#"[[],[]]"#, Ok(r#"[]"#)),
        ("add", r#"[1,"a"]"#, Err(("TypeError", "unsupported operand type(s) for +: 'int' and 'str'"))),
        ("add", r#"[true,"a"]"#, Err(("TypeError", "unsupported operand type(s) for +: 'bool' and 'str'"))),
        ("add", r#"[2.5,[]]"#, Err(("TypeError", "unsupported operand type(s) for +: 'float' and 'list'"))),
        ("add", r#"["a",1]"#, Err(("TypeError", "can only concatenate str (not \"int\") to str"))),
        ("add", r#"["a",null]"#, Err(("TypeError", "can only concatenate str (not \"NoneType\") to str"))),
        ("add", r#"["a",["a"]]"#, Err(("TypeError", "can only concatenate str (not \"list\") to str"))),
        ("add", r#"[[1],1]"#, Err(("TypeError", "can only concatenate list (not \"int\") to list"))),
        ("add", r#"[[1],"a"]"#, Err(("TypeError", "can only concatenate list (not \"str\") to list"))),
        ("add", r#"[[1],{}]"#, Err(("TypeError", "can only concatenate list (not \"dict\") to list"))),
        ("add", r#"[null,1]"#, Err(("TypeError", "unsupported operand type(s) for +: 'NoneType' and 'int'"))),
        ("add", r#"[null,null]"#, Err(("TypeError", "unsupported operand type(s) for +: 'NoneType' and 'NoneType'"))),
        ("add", r#"[{},{}]"#, Err(("TypeError", "unsupported operand type(s) for +: 'dict' and 'dict'"))),
        ("add", r#"[{},[]]"#, Err(("TypeError", "unsupported operand type(s) for +: 'dict' and 'list'"))),
        ("add", r#"[{"a":1},1]"#, Err(("TypeError", "unsupported operand type(s) for +: 'dict' and 'int'"))),
        ("mul", r#"[6,7]"#, Ok(r#"42"#)),
        ("mul", r#"[1180591620717411303425,1180591620717411303425]"#, Ok(r#"1393796574908163946348343575281957416730625"#)),
        ("mul", r#"[-9223372036854775808,-1]"#, Ok(r#"9223372036854775808"#)),
        ("mul", r#"[4294967296,4294967296]"#, Ok(r#"18446744073709551616"#)),
        ("mul", r#"[1180591620717411303425,0]"#, Ok(r#"0"#)),
        ("mul", r#"[true,false]"#, Ok(r#"0"#)),
        ("mul", r#"[true,2.5]"#, Ok(r#"2.5"#)),
        ("mul", r#"[0.1,3]"#, Ok(r#"0.30000000000000004"#)),
        ("mul", r#"[-1,0.0]"#, Ok(r#"-0.0"#)),
        ("mul", r#"[2.5,1180591620717411303425]"#, Ok(r#"2.951479051793528e+21"#)),
        ("mul", r#"["ab",3]"#, Ok(r#""ababab""#)),
        ("mul", r#"[3,"ab"]"#, Ok(r#""ababab""#)),
        ("mul", r#"["ab",true]"#, Ok(r#""ab""#)),
        ("mul", r#"["ab",false]"#, Ok(r#""""#)),
        ("mul", r#"["ab",0]"#, Ok(r#""""#)),
        ("mul", r#"["ab",-2]"#, Ok(r#""""#)),
        ("mul", r#"["",4611686018427387904]"#, Ok(r#""""#)),
        ("mul", r#"[[1,[2]],2]"#, Ok(r#"[1,[2],1,[2]]"#)),
        ("mul", r#"[2,[1]]"#, Ok(r#"[1,1]"#)),
        ("mul", r#"[[1],-1]"#, Ok(r#"[]"#)),
        ("mul", r#"[[],4611686018427387904]"#, Ok(r#"[]"#)),
        ("mul", r#"[false,[1]]"#, Ok(r#"[]"#)),
        ("mul", r#"["a",9223372036854775808]"#, Err(("OverflowError", "cannot fit 'int' into an index-sized integer"))),
        ("mul", r#"["a",-9223372036854775809]"#, Err(("OverflowError", "cannot fit 'int' into an index-sized integer"))),
        ("mul", r#"["a",-9223372036854775808]"#, Ok(r#""""#)),
        ("mul", r#"["",1180591620717411303424]"#, Err(("OverflowError", "cannot fit 'int' into an index-sized integer"))),
        ("mul", r#"[[],1180591620717411303424]"#, Err(("OverflowError", "cannot fit 'int' into an index-sized integer"))),
        ("mul", r#"[1180591620717411303424,"a"]"#, Err(("OverflowError", "cannot fit 'int' into an index-sized integer"))),
        ("mul", r#"["abc",4611686018427387904]"#, Err(("OverflowError", "repeated string is too long"))),
        ("mul", r#"["ab",4611686018427387904]"#, Err(("OverflowError", "repeated string is too long"))),
        ("mul", r#"[[1],4611686018427387904]"#, Err(("MemoryError", ""))),
        ("mul", r#"["a",4611686018427387904]"#, Err(("MemoryError", ""))),
        ("mul", r#"[[1,2],4611686018427387904]"#, Err(("MemoryError", ""))),
        ("mul", r#"["a","b"]"#, Err(("TypeError", "can't multiply sequence by non-int of type 'str'"))),
        ("mul", r#"["a",2.0]"#, Err(("TypeError", "can't multiply sequence by non-int of type 'float'"))),
        ("mul", r#"[2.0,"a"]"#, Err(("TypeError", "can't multiply sequence by non-int of type 'float'"))),
        ("mul", r#"["a",null]"#, Err(("TypeError", "can't multiply sequence by non-int of type 'NoneType'"))),
        ("mul", r#"[null,"a"]"#, Err(("TypeError", "can't multiply sequence by non-int of type 'NoneType'"))),
        ("mul", r#"[[1],[1]]"#, Err(("TypeError", "can't multiply sequence by non-int of type 'list'"))),
        ("mul", r#"[[1],"a"]"#, Err(("TypeError", "can't multiply sequence by non-int of type 'str'"))),
        ("mul", r#"["a",[1]]"#, Err(("TypeError", "can't multiply sequence by non-int of type 'list'"))),
        ("mul", r#"[{},"a"]"#, Err(("TypeError", "can't multiply sequence by non-int of type 'dict'"))),
        ("mul", r#"["a",{}]"#, Err(("TypeError", "can't multiply sequence by non-int of type 'dict'"))),
        ("mul", r#"[null,2]"#, Err(("TypeError", "unsupported operand type(s) for *: 'NoneType' and 'int'"))),
        ("mul", r#"[2,null]"#, Err(("TypeError", "unsupported operand type(s) for *: 'int' and 'NoneType'"))),
        ("mul", r#"[{},2]"#, Err(("TypeError", "unsupported operand type(s) for *: 'dict' and 'int'"))),
        ("mul", r#"[2.5,{}]"#, Err(("TypeError", "unsupported operand type(s) for *: 'float' and 'dict'"))),
        ("mul", r#"[null,null]"#, Err(("TypeError", "unsupported operand type(s) for *: 'NoneType' and 'NoneType'"))),
        ("xsum", r#"[[1,2,3.5]]"#, Ok(r#"6.5"#)),
        ("xsum", r#"[[]]"#, Ok(r#"0"#)),
        ("xsum", r#"[[true,true]]"#, Ok(r#"2"#)),
        ("xsum", r#"[[18446744073709551616,18446744073709551616]]"#, Ok(r#"36893488147419103232"#)),
        ("xsum", r#"[[1180591620717411303425,-1]]"#, Ok(r#"1180591620717411303424"#)),
        ("xsum", r#"[[1,18446744073709551616,0.5]]"#, Ok(r#"1.8446744073709552e+19"#)),
        ("xsum", r#"[[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1]]"#, Ok(r#"0.9999999999999999"#)),
        ("xsum", r#"[""]"#, Ok(r#"0"#)),
        ("xsum", r#"[{}]"#, Ok(r#"0"#)),
        ("xsum", r#"["ab"]"#, Err(("TypeError", "unsupported operand type(s) for +: 'int' and 'str'"))),
        ("xsum", r#"[{"a":1}]"#, Err(("TypeError", "unsupported operand type(s) for +: 'int' and 'str'"))),
        ("xsum", r#"[["a","b"]]"#, Err(("TypeError", "unsupported operand type(s) for +: 'int' and 'str'"))),
        ("xsum", r#"[[[1],[2]]]"#, Err(("TypeError", "unsupported operand type(s) for +: 'int' and 'list'"))),
        ("xsum", r#"[[1,null]]"#, Err(("TypeError", "unsupported operand type(s) for +: 'int' and 'NoneType'"))),
        ("xsum", r#"[[1.5,"a"]]"#, Err(("TypeError", "unsupported operand type(s) for +: 'float' and 'str'"))),
        ("xsum", r#"[[{}]]"#, Err(("TypeError", "unsupported operand type(s) for +: 'int' and 'dict'"))),
        ("xsum", r#"[5]"#, Err(("TypeError", "'int' object is not iterable"))),
        ("xsum", r#"[2.5]"#, Err(("TypeError", "'float' object is not iterable"))),
        ("xsum", r#"[true]"#, Err(("TypeError", "'bool' object is not iterable"))),
        ("xsum", r#"[null]"#, Err(("TypeError", "'NoneType' object is not iterable"))),
    ];

    fn run(task: &str, args: &[Value]) -> Result<Value, PyError> {
        match (task, args) {
            ("add", [x, y]) => add(x, y),
            ("mul", [x, y]) => mul(x, y),
            ("xsum", [n]) => sum(n),
            _ => panic!("no case runner for {task}{args:?}"),
        }
    }

    fn message(e: &PyError) -> String {
        e.exception
            .exc_message
            .iter()
            .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", ")
    }

    #[test]
    fn results_and_errors_are_pythons() {
        for (task, args, want) in CASES {
            let parsed: Vec<Value> = serde_json::from_str(args).unwrap();
            let got = run(task, &parsed);
            let case = format!("{task}(*{args})");
            match (want, got) {
                (Ok(text), Ok(v)) => assert_eq!(v.to_string(), *text, "{case}"),
                (Err((ty, msg)), Err(e)) => {
                    assert_eq!(e.exception.exc_type, *ty, "{case}");
                    assert_eq!(e.exception.exc_module, "builtins", "{case}");
                    assert_eq!(message(&e), *msg, "{case}");
                }
                (want, got) => panic!("{case}: Python gives {want:?}, we give {got:?}"),
            }
        }
    }

    fn big(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn integers_past_64_bits_stay_exact_through_json() {
        // 2**70 + 1 survives parsing and writing: needs serde_json's arbitrary_precision.
        let x = big("1180591620717411303425");
        assert_eq!(x.to_string(), "1180591620717411303425");
        let r = mul(&x, &x).unwrap();
        assert_eq!(r.to_string(), "1393796574908163946348343575281957416730625");
        let back: Value = serde_json::from_str(&r.to_string()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn ints_convert_to_float_as_python_rounds_them() {
        // float(2**1024 - 2**970 - 1) is the largest float; from 2**1024 - 2**970 it overflows.
        let two = BigInt::from(2);
        let edge = two.pow(1024u32) - two.pow(970u32);
        let below = big(&(edge.clone() - BigInt::from(1)).to_string());
        let at = big(&edge.to_string());
        assert_eq!(
            add(&below, &json_f(0.0)).unwrap().to_string(),
            "1.7976931348623157e+308"
        );
        for (x, y) in [(&at, &json_f(0.0)), (&json_f(0.5), &at)] {
            let e = add(x, y).unwrap_err();
            assert_eq!(e.exception.exc_type, "OverflowError");
            assert_eq!(message(&e), "int too large to convert to float");
        }
        let e = sum(&Value::Array(vec![at.clone(), json_f(0.5)])).unwrap_err();
        assert_eq!(message(&e), "int too large to convert to float");
        let e = mul(&at, &json_f(1.0)).unwrap_err();
        assert_eq!(e.exception.exc_type, "OverflowError");
    }

    fn json_f(f: f64) -> Value {
        Value::Number(Number::from_f64(f).unwrap())
    }

    #[test]
    fn an_infinite_float_fails_as_an_unencodable_result() {
        // Python's worker would store the non-JSON token `Infinity`; we store kombu's EncodeError.
        for r in [
            mul(&json_f(1e308), &Value::from(10)),
            add(&json_f(1e308), &json_f(1e308)),
            mul(&json_f(-1e308), &json_f(10.0)),
            sum(&Value::Array(vec![
                json_f(1e308),
                json_f(1e308),
                json_f(-1e308),
            ])),
        ] {
            let e = r.unwrap_err();
            assert_eq!(e.exception.exc_module, "kombu.exceptions");
            assert_eq!(e.exception.exc_type, "EncodeError");
            assert_eq!(
                message(&e),
                "ValueError('Out of range float values are not JSON compliant')"
            );
        }
        // A float the sum passes through on its way to a TypeError is never stored.
        let e = sum(&big(r#"[1e308, 1e308, "a"]"#)).unwrap_err();
        assert_eq!(
            message(&e),
            "unsupported operand type(s) for +: 'float' and 'str'"
        );
    }

    #[test]
    fn pythons_int_digit_limit_holds_for_arguments_and_results() {
        let long = big(&"7".repeat(4301));
        let e = add(&long, &Value::from(1)).unwrap_err();
        assert_eq!(e.exception.exc_type, "ValueError");
        assert_eq!(
            message(&e),
            "Exceeds the limit (4300 digits) for integer string conversion: value has 4301 \
             digits; use sys.set_int_max_str_digits() to increase the limit"
        );
        // Anywhere in the arguments, as json.loads would fail on the whole message.
        let nested = Value::Array(vec![Value::Array(vec![long])]);
        assert!(sum(&nested).is_err());
        assert!(add(&nested, &Value::Array(vec![])).is_err());
        // 4300 digits are fine; a product past them is what Python's encoder refuses.
        let ok = big(&"9".repeat(4300));
        assert_eq!(add(&ok, &Value::from(0)).unwrap(), ok);
        let half = big(&format!("1{}", "0".repeat(2200)));
        let e = mul(&half, &half).unwrap_err();
        assert_eq!(e.exception.exc_module, "kombu.exceptions");
        assert_eq!(
            message(&e),
            "ValueError('Exceeds the limit (4300 digits) for integer string conversion; use \
             sys.set_int_max_str_digits() to increase the limit')"
        );
    }

    #[test]
    fn repetitions_past_the_limit_are_memory_errors() {
        let n = Value::from(MAX_REPEAT_BYTES as u64 + 1);
        let e = mul(&Value::from("a"), &n).unwrap_err();
        assert_eq!(e.exception.exc_type, "MemoryError");
        assert!(e.exception.exc_message.is_empty());
        let e = mul(&n, &big("[null]")).unwrap_err();
        assert_eq!(e.exception.exc_type, "MemoryError");
        let r = mul(&Value::from("ab"), &Value::from(1000)).unwrap();
        assert_eq!(r.as_str().map(str::len), Some(2000));
        let r = mul(&big("[1, [2]]"), &Value::from(1000)).unwrap();
        assert_eq!(r.as_array().map(Vec::len), Some(2000));
    }

    #[test]
    fn floats_are_written_as_python_reprs_them() {
        // repr() in CPython 3.11.
        for (f, repr) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (100.0, "100.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1e22, "1e+22"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (0.00001, "1e-05"),
            (1e-7, "1e-07"),
            (1.5e300, "1.5e+300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
            (-1.2345e-100, "-1.2345e-100"),
            (9007199254740992.0, "9007199254740992.0"),
            // 833212321530332.25, halfway between ...332.2 and ...332.3: Python writes the even
            // digit.
            (f64::from_bits(0x4307_ae6a_e394_0ee2), "833212321530332.2"),
        ] {
            assert_eq!(float_repr(f), repr, "{f:e}");
        }
    }
}
