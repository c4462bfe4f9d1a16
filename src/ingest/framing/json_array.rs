//! `json-array` bodies: one JSON array, each element a message, kept as the exact
//! JSON text it was sent as (its bytes from its first to its last, without the
//! whitespace and commas around it), as zero-copy slices of the body's chunks.
//!
//! One pass over the bytes finds where each element starts and ends, following
//! strings and escapes so that a `]` or `,` inside a string cuts nothing, across chunk
//! boundaries; `serde_json` then checks that each element is valid JSON on its own.
//! Nesting inside an element is limited to serde_json's 128 levels. A malformed body
//! fails whole, its error naming the byte offset where it went wrong.

use std::borrow::Cow;

use serde::de::IgnoredAny;

use super::split::{Chunks, Source};
use super::DecodeError;
use crate::message::Payload;

/// Where the scan is, outside any element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The `[` that opens the body.
    Open,
    /// The first element, or `]` of an empty array.
    FirstOrClose,
    /// An element, after a comma.
    Element,
    /// A comma or the closing `]`.
    CommaOrClose,
    /// Nothing but whitespace.
    End,
}

/// Where the element being scanned is.
#[derive(Debug, Default)]
struct Element {
    start: u64,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

/// Splits a complete body into its array's elements; see the module comment.
pub fn split(body: Chunks, max_message_bytes: u64) -> Result<Vec<Payload>, DecodeError> {
    let spans = scan(&body, max_message_bytes)?;
    let mut body = body;
    let mut at = 0u64;
    let mut elements = Vec::with_capacity(spans.len());
    for (number, (start, end)) in spans.into_iter().enumerate() {
        body.skip((start - at) as usize);
        let element = body.take((end - start) as usize);
        at = end;
        validate(&element, number + 1, start)?;
        elements.push(element);
    }
    Ok(elements)
}

/// The `[start, end)` byte spans of the array's elements.
fn scan(body: &Chunks, max: u64) -> Result<Vec<(u64, u64)>, DecodeError> {
    let mut spans = Vec::new();
    let mut expect = Expect::Open;
    let mut element: Option<Element> = None;
    let mut offset = 0u64;
    let bad =
        |at: u64, what: String| DecodeError::bad_framing(format!("the JSON array is malformed at byte {at}: {what}"));
    for chunk in body.chunks() {
        for &byte in chunk.iter() {
            if let Some(current) = &mut element {
                if !current.ends_before(byte) {
                    if offset + 1 - current.start > max {
                        return Err(DecodeError::too_large(format!(
                            "element {} (starting at byte {}) is longer than the {max}-byte message limit \
                             (--max-message-bytes)",
                            spans.len() + 1,
                            current.start
                        )));
                    }
                    offset += 1;
                    continue;
                }
                spans.push((current.start, offset));
                element = None;
                expect = Expect::CommaOrClose;
            }
            match (expect, byte) {
                (_, b' ' | b'\t' | b'\n' | b'\r') => {}
                (Expect::Open, b'[') => expect = Expect::FirstOrClose,
                (Expect::Open, _) => return Err(bad(offset, format!("expected `[`, found {}", shown(byte)))),
                (Expect::FirstOrClose | Expect::CommaOrClose, b']') => expect = Expect::End,
                (Expect::CommaOrClose, b',') => expect = Expect::Element,
                (Expect::CommaOrClose, _) => {
                    return Err(bad(
                        offset,
                        format!("expected `,` or `]` after element {}, found {}", spans.len(), shown(byte)),
                    ))
                }
                (Expect::Element, b']') => return Err(bad(offset, "a comma before `]` (trailing comma)".into())),
                (Expect::Element | Expect::FirstOrClose, b',') => {
                    return Err(bad(offset, format!("expected element {}, found `,`", spans.len() + 1)))
                }
                (Expect::Element | Expect::FirstOrClose, _) => {
                    let mut started = Element { start: offset, ..Element::default() };
                    started.enter(byte);
                    element = Some(started);
                }
                (Expect::End, _) => return Err(bad(offset, format!("{} after the array's closing `]`", shown(byte)))),
            }
            offset += 1;
        }
    }
    if let Some(current) = element {
        spans.push((current.start, offset));
        expect = Expect::CommaOrClose;
    }
    match expect {
        Expect::End => Ok(spans),
        Expect::Open => Err(bad(offset, "the body is empty, or whitespace: expected a JSON array".into())),
        _ => Err(bad(offset, "the body ends inside the array".into())),
    }
}

impl Element {
    /// Takes the element's first byte.
    fn enter(&mut self, byte: u8) {
        match byte {
            b'"' => self.in_string = true,
            b'[' | b'{' => self.depth = 1,
            _ => {}
        }
    }

    /// Whether the element ended before `byte`; if not, `byte` is taken into it.
    /// Brackets are counted, not matched: a mismatch is left to the JSON check.
    fn ends_before(&mut self, byte: u8) -> bool {
        if self.in_string {
            match (self.escaped, byte) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
            return false;
        }
        match byte {
            b'"' => self.in_string = true,
            b'[' | b'{' => self.depth += 1,
            b']' | b'}' if self.depth > 0 => self.depth -= 1,
            b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r' if self.depth == 0 => return true,
            _ => {}
        }
        false
    }
}

/// Checks that an element is one valid JSON value; the error names the byte.
fn validate(element: &Payload, number: usize, start: u64) -> Result<(), DecodeError> {
    let text: Cow<[u8]> = match element.chunks() {
        [one] => Cow::Borrowed(&one[..]),
        _ => Cow::Owned(element.to_vec()),
    };
    serde_json::from_slice::<IgnoredAny>(&text).map(drop).map_err(|e| {
        let at = start + offset_of(&text, e.line(), e.column());
        let what = e.to_string();
        // serde_json's own position is the element's line and column; the byte offset replaces it.
        let what = what.rsplit_once(" at line ").map_or(what.as_str(), |(what, _)| what);
        DecodeError::bad_framing(format!(
            "the JSON array is malformed at byte {at}: element {number} (starting at byte {start}) is not valid JSON: \
             {what}"
        ))
    })
}

/// The offset of serde_json's 1-based line and column (in bytes) within `text`.
fn offset_of(text: &[u8], line: usize, column: usize) -> u64 {
    let line_start = match line {
        0 | 1 => 0,
        _ => memchr::memchr_iter(b'\n', text).nth(line - 2).map_or(text.len(), |at| at + 1),
    };
    (line_start + column.saturating_sub(1)).min(text.len()) as u64
}

fn shown(byte: u8) -> String {
    match byte {
        b' '..=b'~' => format!("`{}`", byte as char),
        _ => format!("byte 0x{byte:02x}"),
    }
}

/// A JSON array of `elements`, spaced as senders commonly do.
#[cfg(test)]
pub fn encode(elements: &[&str]) -> Vec<u8> {
    format!("[{}]", elements.join(", ")).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::split::encode::{cut, is_slice_of};
    use super::super::DecodeErrorKind;
    use super::*;
    use proptest::prelude::*;

    fn texts(body: &[u8], cuts: &[usize], max: u64) -> Result<Vec<String>, DecodeError> {
        let chunks = cut(body, cuts);
        let elements = split(Chunks::from(chunks.clone()), max)?;
        assert!(elements.iter().all(|e| is_slice_of(&chunks, e)), "elements are slices of the body");
        Ok(elements.iter().map(|e| String::from_utf8(e.to_vec()).unwrap()).collect())
    }

    fn malformed(body: &str) -> String {
        let e = texts(body.as_bytes(), &[], 1000).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadFraming, "{}", e.message);
        e.message
    }

    #[test]
    fn elements_keep_their_text_exactly() {
        let body = r#" [ {"a": [1, "]", {"b": "}\"],"}]} ,"x\\",-1.5e3,true , null,[[ ]], "é ü 😀 \u00e9" ]
"#;
        assert_eq!(
            texts(body.as_bytes(), &[3, 9, 10, 30, 31], 1000).unwrap(),
            [r#"{"a": [1, "]", {"b": "}\"],"}]}"#, r#""x\\""#, "-1.5e3", "true", "null", "[[ ]]", r#""é ü 😀 \u00e9""#]
        );
        assert!(texts(b"[]", &[], 10).unwrap().is_empty());
        assert!(texts(b" [ \n ] \n", &[2], 10).unwrap().is_empty());
    }

    #[test]
    fn malformed_arrays_name_the_byte() {
        assert_eq!(
            malformed(""),
            "the JSON array is malformed at byte 0: the body is empty, or whitespace: expected a JSON array"
        );
        assert_eq!(malformed(r#"{"a": 1}"#), "the JSON array is malformed at byte 0: expected `[`, found `{`");
        assert_eq!(malformed("[1, 2"), "the JSON array is malformed at byte 5: the body ends inside the array");
        assert_eq!(malformed(r#"["open"#), "the JSON array is malformed at byte 6: the body ends inside the array");
        assert_eq!(malformed("[1, 2,]"), "the JSON array is malformed at byte 6: a comma before `]` (trailing comma)");
        assert_eq!(malformed("[,1]"), "the JSON array is malformed at byte 1: expected element 1, found `,`");
        assert_eq!(
            malformed("[1 2]"),
            "the JSON array is malformed at byte 3: expected `,` or `]` after element 1, found `2`"
        );
        assert_eq!(malformed("[1] [2]"), "the JSON array is malformed at byte 4: `[` after the array's closing `]`");
        assert_eq!(
            malformed(r#"[1, {"a": tru}]"#),
            "the JSON array is malformed at byte 13: element 2 (starting at byte 4) is not valid JSON: expected ident"
        );
        let two_lines = malformed("[1, {\"a\":\n 1 x}]");
        assert!(two_lines.starts_with("the JSON array is malformed at byte 13: element 2"), "{two_lines}");
        assert!(malformed("[\"\u{1}\"]").contains("element 1 (starting at byte 1) is not valid JSON"));
    }

    #[test]
    fn an_element_over_the_limit_is_too_large() {
        let e = texts(br#"["short", "much too long"]"#, &[], 10).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::TooLarge);
        assert_eq!(
            e.message,
            "element 2 (starting at byte 10) is longer than the 10-byte message limit (--max-message-bytes)"
        );
        assert_eq!(texts(br#"["12345678"]"#, &[], 10).unwrap(), [r#""12345678""#]);
    }

    proptest! {
        #[test]
        fn any_json_values_split_back_over_random_chunks(
            values in prop::collection::vec(any::<(String, Vec<i64>, Option<bool>)>(), 0..20),
            cuts in prop::collection::vec(0usize..4000, 0..12),
        ) {
            let elements: Vec<String> = values.iter().map(|v| serde_json::to_string(v).unwrap()).collect();
            let refs: Vec<&str> = elements.iter().map(String::as_str).collect();
            prop_assert_eq!(texts(&encode(&refs), &cuts, 1 << 20).unwrap(), elements);
        }
    }
}
