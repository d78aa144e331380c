//! JSON text exactly as Python's `json.dumps` writes it with its defaults, which is what Kombu's
//! JSON serializer (`kombu.utils.json.dumps`) produces: `", "` between items, `": "` after keys,
//! and `ensure_ascii`, so every character outside printable ASCII is a `\uXXXX` escape (a pair of
//! them past the Basic Multilingual Plane).
//!
//! Backends that store Celery's JSON as text a Python program may compare or search
//! (django-celery-results' columns) write it this way, so a row written by celeriac reads
//! exactly like one written by a Python worker.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};

/// `json.dumps(value)` as Python writes it, for a JSON value (or a slice of them, a map, a
/// string).
pub fn dumps<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(64);
    let mut ser = Serializer::with_formatter(&mut out, PythonFormatter);
    // Writing into a Vec cannot fail, and a `Value` always serializes.
    if value.serialize(&mut ser).is_err() {
        return String::from("null");
    }
    // Only ASCII is ever written.
    String::from_utf8(out).unwrap_or_default()
}

struct PythonFormatter;

impl PythonFormatter {
    fn escape_char<W: ?Sized + io::Write>(writer: &mut W, c: char) -> io::Result<()> {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            write!(writer, "\\u{unit:04x}")?;
        }
        Ok(())
    }
}

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // serde_json has escaped quotes, backslashes and control characters already; Python's
        // ensure_ascii also escapes DEL and everything past ASCII.
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c == '\x7f' || !c.is_ascii() {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                Self::escape_char(writer, c)?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        char_escape: CharEscape,
    ) -> io::Result<()> {
        // The short forms Python uses, and `\u00XX` (lower-case hex) for the other controls.
        let s: &[u8] = match char_escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => {
                return write!(writer, "\\u{byte:04x}");
            }
        };
        writer.write_all(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    // The expected texts are what CPython 3.11's json.dumps prints for the same values.
    #[test]
    fn separators_and_nesting_follow_python() {
        assert_eq!(dumps(&json!({"children": []})), r#"{"children": []}"#);
        assert_eq!(
            dumps(&json!({"a": [1, 2.5, null, true, false], "b": {}})),
            r#"{"a": [1, 2.5, null, true, false], "b": {}}"#
        );
        assert_eq!(
            dumps(&json!([[["id", null], null]])),
            r#"[[["id", null], null]]"#
        );
        assert_eq!(dumps(&json!("(2, 3)")), r#""(2, 3)""#);
        assert_eq!(dumps(&json!(null)), "null");
    }

    #[test]
    fn strings_are_escaped_as_with_ensure_ascii() {
        // json.dumps("h\u00e9llo \u2603 \U0001F600 \"q\" \\ / \n\t\x01\x7f")
        assert_eq!(
            dumps(&json!(
                "h\u{e9}llo \u{2603} \u{1F600} \"q\" \\ / \n\t\u{1}\u{7f}"
            )),
            r#""h\u00e9llo \u2603 \ud83d\ude00 \"q\" \\ / \n\t\u0001\u007f""#
        );
        assert_eq!(
            dumps(&json!({"\u{e9}": "\r\u{8}\u{c}"})),
            r#"{"\u00e9": "\r\b\f"}"#
        );
    }

    #[test]
    fn numbers_keep_their_text() {
        let v: Value =
            serde_json::from_str("[123456789012345678901234567890, 0.1, -7]").expect("valid JSON");
        assert_eq!(dumps(&v), "[123456789012345678901234567890, 0.1, -7]");
    }
}
