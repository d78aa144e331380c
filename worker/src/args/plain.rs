//! Binding numbers by the type a handler asks for.
//!
//! serde_json's `arbitrary_precision` (on in this workspace) keeps every number's JSON text, so
//! that a `Value` argument holds `2**70 + 1` exactly. Its typed deserializers then parse that
//! text as the target type and report any failure as a bare "invalid number". [`Plain`] reads a
//! `Value` as serde_json does without the feature, so a `u32` given `-1` or `2.5` is explained
//! ("invalid value: integer `-1`, expected u32"), while `Value`/`Number` targets (and anything
//! else that asks for `deserialize_any`) still get the exact text.

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Unexpected,
    Visitor,
};
use serde_json::{Error, Map, Number, Value};

/// A `Value` to bind: numbers reach integer and float targets as plain integers and floats.
pub(super) struct Plain(pub(super) Value);

fn is_integer_text(text: &str) -> bool {
    !text.contains(['.', 'e', 'E'])
}

/// An integer target (`wide`: 128 bits): visits the number as an integer if it is one, else as
/// a float, so that the target's own message explains a mismatch.
fn integer<'de, V: Visitor<'de>>(n: &Number, wide: bool, visitor: V) -> Result<V::Value, Error> {
    if let Some(u) = n.as_u64() {
        return visitor.visit_u64(u);
    }
    if let Some(i) = n.as_i64() {
        return visitor.visit_i64(i);
    }
    let text = n.to_string();
    if is_integer_text(&text) {
        if wide {
            if let Ok(u) = text.parse::<u128>() {
                return visitor.visit_u128(u);
            }
            if let Ok(i) = text.parse::<i128>() {
                return visitor.visit_i128(i);
            }
        }
        let shown = format!("integer `{text}`");
        return Err(de::Error::invalid_value(
            Unexpected::Other(&shown),
            &visitor,
        ));
    }
    float(n, visitor)
}

/// A float target: any number, as the nearest float.
fn float<'de, V: Visitor<'de>>(n: &Number, visitor: V) -> Result<V::Value, Error> {
    match n.as_f64() {
        Some(f) => visitor.visit_f64(f),
        // Finite-only `as_f64` refuses 1e400; `float()` makes it infinity.
        None => visitor.visit_f64(n.to_string().parse().unwrap_or(f64::NAN)),
    }
}

fn visit_array<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, Error> {
    let len = items.len();
    let mut seq = Seq(items.into_iter());
    let out = visitor.visit_seq(&mut seq)?;
    if seq.0.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in array"))
    }
}

fn visit_object<'de, V: Visitor<'de>>(
    map: Map<String, Value>,
    visitor: V,
) -> Result<V::Value, Error> {
    let len = map.len();
    let mut access = Entries {
        iter: map.into_iter(),
        value: None,
    };
    let out = visitor.visit_map(&mut access)?;
    if access.iter.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in map"))
    }
}

struct Seq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for Seq {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Plain(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for Entries {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(IntoDeserializer::<Error>::into_deserializer(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(Plain(v)),
            None => Err(de::Error::custom("value is missing")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

macro_rules! integers {
    ($wide:literal: $($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                Value::Number(n) => integer(&n, $wide, visitor),
                other => other.$method(visitor),
            }
        }
    )*};
}

macro_rules! floats {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                Value::Number(n) => float(&n, visitor),
                other => other.$method(visitor),
            }
        }
    )*};
}

macro_rules! forward {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.0.$method(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for Plain {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visit_array(items, visitor),
            Value::Object(map) => visit_object(map, visitor),
            other => other.deserialize_any(visitor),
        }
    }

    integers! {
        false: deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_u8
        deserialize_u16 deserialize_u32 deserialize_u64
    }

    integers! { true: deserialize_i128 deserialize_u128 }

    floats! { deserialize_f32 deserialize_f64 }

    forward! {
        deserialize_bool deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_unit deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Plain(other)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visit_array(items, visitor),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visit_object(map, visitor),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visit_array(items, visitor),
            Value::Object(map) => visit_object(map, visitor),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    fn read<T: for<'de> Deserialize<'de>>(json: &str) -> Result<T, String> {
        let v: Value = serde_json::from_str(json).unwrap();
        T::deserialize(Plain(v)).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_of_the_wrong_kind_are_explained() {
        assert_eq!(
            read::<u32>("-1").unwrap_err(),
            "invalid value: integer `-1`, expected u32"
        );
        assert_eq!(
            read::<u32>("2.5").unwrap_err(),
            "invalid type: floating point `2.5`, expected u32"
        );
        assert_eq!(
            read::<u8>("300").unwrap_err(),
            "invalid value: integer `300`, expected u8"
        );
        assert_eq!(
            read::<i64>("1180591620717411303425").unwrap_err(),
            "invalid value: integer `1180591620717411303425`, expected i64"
        );
        let huge = format!("1{}", "0".repeat(40));
        assert_eq!(
            read::<u64>(&huge).unwrap_err(),
            format!("invalid value: integer `{huge}`, expected u64")
        );
        assert_eq!(
            read::<Option<u32>>(r#""x""#).unwrap_err(),
            r#"invalid type: string "x", expected u32"#
        );
    }

    #[test]
    fn numbers_bind_to_numeric_targets_and_values_keep_their_text() {
        assert_eq!(read::<u32>("7"), Ok(7));
        assert_eq!(read::<i8>("-7"), Ok(-7));
        assert_eq!(
            read::<u128>("1180591620717411303425"),
            Ok(1_180_591_620_717_411_303_425)
        );
        assert_eq!(read::<f64>("1e+16"), Ok(1e16));
        assert_eq!(read::<f64>("3"), Ok(3.0));
        assert_eq!(read::<Option<f64>>("null"), Ok(None));
        assert_eq!(read::<Vec<(u8, f32)>>("[[1, 0.5]]"), Ok(vec![(1, 0.5)]));
        let big = format!("[1180591620717411303425, 1e+16, {}]", "9".repeat(60));
        let v = read::<Value>(&big).unwrap();
        assert_eq!(
            v.to_string(),
            format!("[1180591620717411303425,1e+16,{}]", "9".repeat(60))
        );
        #[derive(Debug, Deserialize, PartialEq)]
        struct Nested {
            n: Vec<u16>,
            v: Value,
        }
        assert_eq!(
            read::<Nested>(r#"{"n": [1, 2], "v": 2.50}"#),
            Ok(Nested {
                n: vec![1, 2],
                v: serde_json::from_str("2.50").unwrap()
            })
        );
        assert_eq!(
            read::<i128>("-1180591620717411303425"),
            Ok(-1_180_591_620_717_411_303_425)
        );
        assert!(read::<(u8,)>("[1, 2]").is_err());
    }
}
