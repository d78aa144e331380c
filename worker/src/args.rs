//! Binding Celery's `args`/`kwargs` to a handler's typed arguments, the way Python binds a call.
//!
//! A handler names its arguments with a struct: `struct Add { x: i64, y: i64 }`. Positional
//! args fill the fields in declaration order, keyword args by name, and the result goes through
//! serde, so `Option` fields are optional and `#[serde(default)]` works. A tuple takes
//! positional args only; `()` takes none; [`RawArgs`] takes whatever came (`*args, **kwargs`).
//! Binding errors read like Python's `TypeError`s.

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::task_error::PyError;

mod plain;

use plain::Plain;

/// Every argument as sent, for handlers that take `*args, **kwargs`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RawArgs {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
}

const RAW_ARGS: &str = "$celeriac::RawArgs";

impl<'de> Deserialize<'de> for RawArgs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Parts {
            args: Vec<Value>,
            kwargs: Map<String, Value>,
        }
        let parts = d.deserialize_struct(RAW_ARGS, &["args", "kwargs"], PartsVisitor)?;
        let Parts { args, kwargs } = Parts::deserialize(parts).map_err(de::Error::custom)?;
        Ok(Self { args, kwargs })
    }
}

struct PartsVisitor;

impl<'de> Visitor<'de> for PartsVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("args and kwargs")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Binds `args`/`kwargs` to `A`, or explains why not as a Python `TypeError`.
pub fn bind<A: DeserializeOwned>(
    task: &str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
) -> Result<A, PyError> {
    A::deserialize(ArgsDeserializer { args, kwargs })
        .map_err(|e| PyError::type_error(format!("{task}() {}", e.0)))
}

#[derive(Debug)]
struct BindError(String);

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BindError {}

impl de::Error for BindError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

fn from_json(e: serde_json::Error) -> BindError {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return BindError(format!("missing 1 required positional argument: '{name}'"));
    }
    BindError(format!("got invalid arguments: {msg}"))
}

struct ArgsDeserializer {
    args: Vec<Value>,
    kwargs: Map<String, Value>,
}

impl ArgsDeserializer {
    fn positional_only(self, what: &str) -> Result<Value, BindError> {
        if let Some(name) = self.kwargs.keys().next() {
            return Err(BindError(format!(
                "got an unexpected keyword argument '{name}' ({what} takes positional arguments only)"
            )));
        }
        Ok(Value::Array(self.args))
    }
}

macro_rules! positional {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BindError> {
            Plain(self.positional_only("this task")?).$method(visitor).map_err(from_json)
        }
    )*};
}

impl<'de> Deserializer<'de> for ArgsDeserializer {
    type Error = BindError;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, BindError> {
        if name == RAW_ARGS {
            let mut m = Map::new();
            m.insert("args".into(), Value::Array(self.args));
            m.insert("kwargs".into(), Value::Object(self.kwargs));
            return Plain(Value::Object(m))
                .deserialize_map(visitor)
                .map_err(from_json);
        }
        if self.args.len() > fields.len() {
            return Err(BindError(format!(
                "takes {} positional argument{} but {} were given",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" },
                self.args.len()
            )));
        }
        let mut bound = Map::new();
        for (field, value) in fields.iter().zip(self.args) {
            bound.insert((*field).to_owned(), value);
        }
        for (key, value) in self.kwargs {
            if bound.contains_key(&key) {
                return Err(BindError(format!(
                    "got multiple values for argument '{key}'"
                )));
            }
            if !fields.contains(&key.as_str()) {
                return Err(BindError(format!(
                    "got an unexpected keyword argument '{key}'"
                )));
            }
            bound.insert(key, value);
        }
        Plain(Value::Object(bound))
            .deserialize_struct(name, fields, visitor)
            .map_err(from_json)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BindError> {
        if let Some(name) = self.kwargs.keys().next() {
            return Err(BindError(format!(
                "got an unexpected keyword argument '{name}'"
            )));
        }
        if !self.args.is_empty() {
            return Err(BindError(format!(
                "takes 0 positional arguments but {} were given",
                self.args.len()
            )));
        }
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, BindError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, BindError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, BindError> {
        let given = self.args.len();
        let args = self.positional_only("this task")?;
        if given != len {
            return Err(BindError(format!(
                "takes {len} positional argument{} but {given} were given",
                if len == 1 { "" } else { "s" }
            )));
        }
        Plain(args)
            .deserialize_tuple(len, visitor)
            .map_err(from_json)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, BindError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BindError> {
        if !self.args.is_empty() {
            return Err(BindError(format!(
                "takes keyword arguments only but {} positional were given",
                self.args.len()
            )));
        }
        Plain(Value::Object(self.kwargs))
            .deserialize_map(visitor)
            .map_err(from_json)
    }

    positional! {
        deserialize_any deserialize_seq deserialize_bool deserialize_i8 deserialize_i16
        deserialize_i32 deserialize_i64 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_option
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, BindError> {
        Plain(self.positional_only("this task")?)
            .deserialize_enum(name, variants, visitor)
            .map_err(from_json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Add {
        x: i64,
        y: i64,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct WithDefault {
        times: u32,
        #[serde(default)]
        countdown: Option<f64>,
    }

    fn kw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn positional_and_keyword_bind_like_python() {
        let a: Add = bind("add", vec![json!(2), json!(3)], Map::new()).unwrap();
        assert_eq!(a, Add { x: 2, y: 3 });
        let a: Add = bind("add", vec![json!(2)], kw(json!({"y": 5}))).unwrap();
        assert_eq!(a, Add { x: 2, y: 5 });
        let a: Add = bind("add", vec![], kw(json!({"y": 1, "x": 4}))).unwrap();
        assert_eq!(a, Add { x: 4, y: 1 });
        let d: WithDefault = bind("retry", vec![json!(2)], Map::new()).unwrap();
        assert_eq!(
            d,
            WithDefault {
                times: 2,
                countdown: None
            }
        );
    }

    #[test]
    fn errors_read_like_pythons_type_errors() {
        let msg = |r: Result<Add, PyError>| r.unwrap_err().exception.summary();
        assert_eq!(
            msg(bind("add", vec![json!(1)], Map::new())),
            "TypeError: add() missing 1 required positional argument: 'y'"
        );
        assert_eq!(
            msg(bind("add", vec![json!(1), json!(2), json!(3)], Map::new())),
            "TypeError: add() takes 2 positional arguments but 3 were given"
        );
        assert_eq!(
            msg(bind("add", vec![json!(1)], kw(json!({"x": 2})))),
            "TypeError: add() got multiple values for argument 'x'"
        );
        assert_eq!(
            msg(bind("add", vec![json!(1), json!(2)], kw(json!({"z": 2})))),
            "TypeError: add() got an unexpected keyword argument 'z'"
        );
        assert!(
            msg(bind("add", vec![json!("a"), json!(2)], Map::new()))
                .starts_with("TypeError: add() got invalid arguments")
        );
    }

    #[test]
    fn numbers_of_the_wrong_kind_say_what_was_expected() {
        let msg = |args: Vec<Value>| {
            bind::<WithDefault>("retry", args, Map::new())
                .unwrap_err()
                .exception
                .summary()
        };
        assert_eq!(
            msg(vec![json!(-1)]),
            "TypeError: retry() got invalid arguments: invalid value: integer `-1`, expected u32"
        );
        assert_eq!(
            msg(vec![json!(2.5)]),
            "TypeError: retry() got invalid arguments: invalid type: floating point `2.5`, \
             expected u32"
        );
        let d: WithDefault = bind("retry", vec![json!(1), json!(3)], Map::new()).unwrap();
        assert_eq!(d.countdown, Some(3.0));
    }

    #[test]
    fn tuples_unit_and_raw() {
        let t: (i64, String) = bind("t", vec![json!(1), json!("s")], Map::new()).unwrap();
        assert_eq!(t, (1, "s".to_owned()));
        assert!(bind::<(i64,)>("t", vec![], Map::new()).is_err());
        bind::<()>("u", vec![], Map::new()).unwrap();
        assert!(bind::<()>("u", vec![json!(1)], Map::new()).is_err());
        let raw: RawArgs = bind("echo", vec![json!(1)], kw(json!({"k": true}))).unwrap();
        assert_eq!(raw.args, vec![json!(1)]);
        assert_eq!(raw.kwargs["k"], json!(true));
        let v: Value = bind("v", vec![json!(1)], Map::new()).unwrap();
        assert_eq!(v, json!([1]));
    }
}
