//! Checks for `json-array` bodies against serde_json reading the whole body as one
//! array of raw values: where it reads one, the decoder gives exactly its elements'
//! texts (or refuses the first one over the limit as too large); where it refuses the
//! body, so does the decoder.
//!
//! serde_json's raw values must be UTF-8, while the decoder keeps a string's bytes as
//! they were sent without checking them, so only UTF-8 bodies are compared; every body
//! must decode without panicking, and what comes out must be slices of it.

use serde_json::value::RawValue;
use spout_sidecar::ingest::framing::{DecodeErrorKind, Framing};

use super::framing::{decode_http, http_body, is_slice_of};

pub fn json_array(data: &[u8]) {
    let (max, body, chunks) = http_body(data);
    let got = decode_http(Framing::JsonArray, &chunks, max);
    if let Ok(messages) = &got {
        for message in messages {
            assert!(is_slice_of(&chunks, &message.payload), "an element was copied");
            assert!(message.payload.len() <= max as u64, "an element over the {max}-byte limit");
            assert_eq!((message.name.as_deref(), message.line), (None, true));
        }
    }
    if std::str::from_utf8(body).is_err() {
        return;
    }
    match (serde_json::from_slice::<Vec<&RawValue>>(body), got) {
        (Ok(elements), got) => {
            let texts: Vec<&[u8]> = elements.iter().map(|e| e.get().as_bytes()).collect();
            match (texts.iter().position(|text| text.len() > max), got) {
                (None, Ok(messages)) => {
                    let payloads: Vec<Vec<u8>> = messages.iter().map(|m| m.payload.to_vec()).collect();
                    assert_eq!(payloads, texts);
                }
                (Some(over), Err(error)) => {
                    assert_eq!(error.kind, DecodeErrorKind::TooLarge, "{error}");
                    assert!(error.message.starts_with(&format!("element {} ", over + 1)), "{error}");
                }
                (over, got) => {
                    panic!("serde_json reads the array (element {over:?} over the limit), the decoder gave {got:?}")
                }
            }
        }
        (Err(reference), Ok(messages)) => {
            panic!("the decoder split a body serde_json refuses ({reference}) into {} elements", messages.len())
        }
        // Refused by both; the decoder may first find an element over the limit.
        (Err(_), Err(error)) => match error.kind {
            DecodeErrorKind::BadFraming => {
                assert!(error.message.starts_with("the JSON array is malformed at byte "), "{error}")
            }
            DecodeErrorKind::TooLarge => assert!(error.message.starts_with("element "), "{error}"),
            _ => panic!("{error:?}"),
        },
    }
}
