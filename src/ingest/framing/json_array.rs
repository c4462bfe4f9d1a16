//! `json-array` bodies: one JSON array, each element a message, kept as the exact
//! JSON text it was sent as (its bytes from its first to its last, without the
//! whitespace and commas around it), as zero-copy slices of the body's chunks.
//!
//! One pass: the brackets and commas between elements are read here, and each
//! element is parsed by `serde_json`, whose parse both checks it and says where it
//! ends, so a `]` or `,` inside a string cuts nothing. serde_json skips a value it
//! need not keep without recursing, so no depth of nesting can exhaust the stack. A
//! malformed body fails whole, its error naming the byte offset where it went wrong.

use std::borrow::Cow;

use serde::de::IgnoredAny;

use super::split::{Chunks, Source};
use super::DecodeError;
use crate::message::Payload;

/// Splits a complete body into its array's elements; see the module comment.
pub fn split(body: Chunks, max_message_bytes: u64) -> Result<Vec<Payload>, DecodeError> {
    let spans = scan(&contiguous(&body), max_message_bytes)?;
    let mut body = body;
    let mut at = 0;
    let mut elements = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        body.skip(start - at);
        elements.push(body.take(end - start));
        at = end;
    }
    Ok(elements)
}

/// The body as one slice, for the parser: copied only if it came in several chunks.
/// The elements are still cut from the chunks themselves.
fn contiguous(body: &Chunks) -> Cow<'_, [u8]> {
    let mut chunks = body.chunks();
    match (chunks.next(), chunks.next()) {
        (None, _) => Cow::Borrowed(&[]),
        (Some(only), None) => Cow::Borrowed(only),
        _ => {
            let mut text = Vec::with_capacity(body.buffered());
            body.chunks().for_each(|chunk| text.extend_from_slice(chunk));
            Cow::Owned(text)
        }
    }
}

/// The `[start, end)` byte spans of the array's elements.
fn scan(text: &[u8], max: u64) -> Result<Vec<(usize, usize)>, DecodeError> {
    let mut at = skip_whitespace(text, 0);
    match text.get(at) {
        Some(b'[') => at += 1,
        Some(&byte) => return Err(malformed(at, format!("expected `[`, found {}", shown(byte)))),
        None => return Err(malformed(at, "the body is empty, or whitespace: expected a JSON array".into())),
    }
    let mut spans = Vec::new();
    loop {
        at = skip_whitespace(text, at);
        match text.get(at) {
            Some(b']') if spans.is_empty() => break,
            Some(b']') => return Err(malformed(at, "a comma before `]` (trailing comma)".into())),
            Some(b',') => return Err(malformed(at, format!("expected element {}, found `,`", spans.len() + 1))),
            Some(_) => {}
            None => return Err(ends_inside(text)),
        }
        let number = spans.len() + 1;
        let end = element_end(text, at, number)?;
        if (end - at) as u64 > max {
            return Err(DecodeError::too_large(format!(
                "element {number} (starting at byte {at}) is longer than the {max}-byte message limit \
                 (--max-message-bytes)"
            )));
        }
        spans.push((at, end));
        at = skip_whitespace(text, end);
        match text.get(at) {
            Some(b',') => at += 1,
            Some(b']') => break,
            Some(&byte) => {
                return Err(malformed(at, format!("expected `,` or `]` after element {number}, found {}", shown(byte))))
            }
            None => return Err(ends_inside(text)),
        }
    }
    // Past the closing `]`.
    at = skip_whitespace(text, at + 1);
    match text.get(at) {
        Some(&byte) => Err(malformed(at, format!("{} after the array's closing `]`", shown(byte)))),
        None => Ok(spans),
    }
}

/// Where the element that starts at `start` ends: serde_json parses one value there
/// and stops at its last byte.
fn element_end(text: &[u8], start: usize, number: usize) -> Result<usize, DecodeError> {
    let rest = &text[start..];
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<IgnoredAny>();
    let error = match values.next() {
        Some(Ok(_)) => return Ok(start + values.byte_offset()),
        Some(Err(error)) => error,
        None => unreachable!("an element starts at a byte that is not whitespace"),
    };
    if error.is_eof() {
        return Err(ends_inside(text));
    }
    let at = start + offset_of(rest, error.line(), error.column());
    let what = error.to_string();
    // serde_json's own position is a line and column; the byte offset replaces it.
    let what = what.rsplit_once(" at line ").map_or(what.as_str(), |(what, _)| what);
    Err(malformed(at, format!("element {number} (starting at byte {start}) is not valid JSON: {what}")))
}

fn malformed(at: usize, what: String) -> DecodeError {
    DecodeError::bad_framing(format!("the JSON array is malformed at byte {at}: {what}"))
}

/// The body ended before the array did: inside an element or between two.
fn ends_inside(text: &[u8]) -> DecodeError {
    malformed(text.len(), "the body ends inside the array".into())
}

fn skip_whitespace(text: &[u8], from: usize) -> usize {
    from + text[from..].iter().take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')).count()
}

/// The offset of serde_json's 1-based line and column (in bytes) within `text`.
fn offset_of(text: &[u8], line: usize, column: usize) -> usize {
    let line_start = match line {
        0 | 1 => 0,
        _ => memchr::memchr_iter(b'\n', text).nth(line - 2).map_or(text.len(), |at| at + 1),
    };
    (line_start + column.saturating_sub(1)).min(text.len())
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
        assert_eq!(
            malformed("[1, 2x]"),
            "the JSON array is malformed at byte 5: element 2 (starting at byte 4) is not valid JSON: trailing characters"
        );
    }

    #[test]
    fn deep_nesting_is_read_without_recursing() {
        let deep = format!("[{}1{}, 1]", "[{\"a\":".repeat(50_000), "}]".repeat(50_000));
        assert_eq!(texts(deep.as_bytes(), &[], 1 << 20).unwrap().len(), 2);
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
