//! Checks for `multipart/form-data`: a random body and a random boundary, through the
//! same Content-Type parsing and decoding the HTTP path uses. Nothing is known to come
//! out of a random body, so the check is on what does: every part is a contiguous run
//! of the body's bytes, no longer than the limit, named by a valid filename or by the
//! request's name; failures are one of the three decode errors, with a reason.

use spout_sidecar::ingest::framing::{decode, DecodeErrorKind, Framing};
use spout_sidecar::message::file_name;

use super::block_on;
use super::knobs::{cut, Knobs};

const REQUEST_NAME: &str = "request.bin";

pub fn multipart(data: &[u8]) {
    let mut knobs = Knobs::new(data);
    let max = knobs.u16();
    let boundary_len = usize::from(knobs.byte() % 80);
    let boundary = String::from_utf8_lossy(knobs.take(boundary_len)).into_owned();
    let sizes = knobs.sizes();
    let body = knobs.rest();

    let content_type = format!("multipart/form-data; boundary={boundary}");
    let framing = match Framing::from_content_type(Some(&content_type)) {
        Ok(framing @ Framing::Multipart { .. }) => framing,
        Ok(other) => panic!("{content_type:?} parsed as {other:?}"),
        Err(error) => return assert_eq!(error.kind, DecodeErrorKind::BadFraming, "{error}"),
    };
    match block_on(decode(&framing, cut(body, &sizes), Some(REQUEST_NAME), max.into())) {
        Ok(messages) => {
            let total: u64 = messages.iter().map(|m| m.payload.len()).sum();
            assert!(total <= body.len() as u64, "{total} bytes of parts from a {}-byte body", body.len());
            for message in messages {
                assert!(message.payload.len() <= max.into(), "a part over the {max}-byte limit");
                let bytes = message.payload.to_vec();
                assert!(memchr::memmem::find(body, &bytes).is_some(), "a part that is not in the body");
                let name = message.name.expect("every part is named, by itself or the request");
                assert!(name == REQUEST_NAME || file_name::validate(&name).is_ok(), "part named {name:?}");
                assert!(!message.line);
            }
        }
        Err(error) => {
            assert!(!error.message.is_empty(), "{error:?}");
            let known = [DecodeErrorKind::BadFraming, DecodeErrorKind::TooLarge, DecodeErrorKind::BadFileName];
            assert!(known.contains(&error.kind), "{error:?}");
        }
    }
}
