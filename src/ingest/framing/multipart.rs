//! `multipart/form-data` bodies: each part is a message; a part's `filename` names its
//! file (checked like any client-given name), a part without one (or with an empty
//! one, as browsers send for an empty file input) takes the request's name.
//!
//! The one copy on the ingest path happens here: `multer` gathers the body into its
//! own buffer to find the boundaries, and the parts are slices of that buffer rather
//! than of the chunks the body arrived in. Parsing multipart by hand to save it is not
//! worth the risk; producers that care about the copy send frames or NDJSON.

use std::convert::Infallible;

use bytes::Bytes;

use super::DecodeError;
use crate::message::file_name;
use crate::message::{Incoming, Payload};

/// The boundary of a `multipart/form-data` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, DecodeError> {
    multer::parse_boundary(content_type).map_err(|e| {
        DecodeError::bad_framing(match e {
            multer::Error::NoBoundary => format!(
                "Content-Type {content_type:?} has no boundary parameter \
                 (expected e.g. `multipart/form-data; boundary=x7f3a`)"
            ),
            other => format!("Content-Type {content_type:?} does not parse: {other}"),
        })
    })
}

/// Decodes every part of a body; see the module comment.
pub async fn decode(
    boundary: &str,
    body: Vec<Bytes>,
    name: Option<&str>,
    max_message_bytes: u64,
) -> Result<Vec<Incoming>, DecodeError> {
    let stream = futures_util::stream::iter(body.into_iter().map(Ok::<Bytes, Infallible>));
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut messages = Vec::new();
    loop {
        let number = messages.len() + 1;
        let malformed =
            |e: multer::Error| DecodeError::bad_framing(format!("multipart part {number} is malformed: {e}"));
        let Some(mut part) = parts.next_field().await.map_err(malformed)? else { break };
        let label = match part.name() {
            Some(field) => format!("multipart part {number} (field {field:?})"),
            None => format!("multipart part {number}"),
        };
        let file = match part.file_name() {
            Some(file) if !file.is_empty() => {
                file_name::validate(file).map_err(|why| DecodeError::bad_file_name(format!("{label}: {why}")))?;
                Some(file.to_owned())
            }
            _ => name.map(str::to_owned),
        };
        let mut payload = Payload::new();
        while let Some(chunk) = part.chunk().await.map_err(malformed)? {
            payload.push(chunk);
            if payload.len() > max_message_bytes {
                return Err(DecodeError::too_large(format!(
                    "{label} is longer than the {max_message_bytes}-byte message limit (--max-message-bytes)"
                )));
            }
        }
        messages.push(Incoming { name: file, payload, line: false, origin: None });
    }
    Ok(messages)
}

/// A `multipart/form-data` body of `(filename, bytes)` parts, as curl `-F` sends it.
#[cfg(test)]
pub fn encode(boundary: &str, parts: &[(Option<&str>, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (file, bytes)) in parts.iter().enumerate() {
        out.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"part{i}\"").as_bytes());
        if let Some(file) = file {
            out.extend_from_slice(format!("; filename=\"{file}\"").as_bytes());
        }
        out.extend_from_slice(b"\r\nContent-Type: application/octet-stream\r\n\r\n");
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::super::split::encode::cut;
    use super::super::DecodeErrorKind;
    use super::*;
    use proptest::prelude::*;

    const BOUNDARY: &str = "------------------------d74496d66958873e";

    fn run(body: &[u8], name: Option<&str>, max: u64) -> Result<Vec<Incoming>, DecodeError> {
        run_in_chunks(body, &[7, 60, 61, 130], name, max)
    }

    fn run_in_chunks(body: &[u8], cuts: &[usize], name: Option<&str>, max: u64) -> Result<Vec<Incoming>, DecodeError> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(decode(BOUNDARY, cut(body, cuts), name, max))
    }

    #[test]
    fn filenames_name_parts_and_the_rest_take_the_request_name() {
        let body = encode(BOUNDARY, &[(Some("a/b.json"), b"{\"k\":1}"), (None, b"plain"), (Some(""), b"")]);
        let messages = run(&body, Some("default.txt"), 100).unwrap();
        let got: Vec<_> = messages.iter().map(|m| (m.name.as_deref(), m.payload.to_vec(), m.line)).collect();
        assert_eq!(
            got,
            [
                (Some("a/b.json"), b"{\"k\":1}".to_vec(), false),
                (Some("default.txt"), b"plain".to_vec(), false),
                (Some("default.txt"), vec![], false),
            ]
        );
    }

    #[test]
    fn a_bad_filename_fails_the_body_naming_the_part() {
        let body = encode(BOUNDARY, &[(Some("ok.txt"), b"1"), (Some("../etc/passwd"), b"2")]);
        let e = run(&body, None, 100).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadFileName);
        assert!(e.message.starts_with("multipart part 2 (field \"part1\"): file name"), "{}", e.message);
    }

    #[test]
    fn an_oversize_part_is_too_large() {
        let body = encode(BOUNDARY, &[(None, b"small"), (None, &[b'x'; 101])]);
        let e = run(&body, None, 100).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::TooLarge);
        assert!(e.message.starts_with("multipart part 2 "), "{}", e.message);
    }

    #[test]
    fn a_truncated_body_is_bad_framing() {
        let body = encode(BOUNDARY, &[(None, b"first"), (None, b"second")]);
        let e = run(&body[..body.len() - 30], None, 100).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadFraming);
        assert!(e.message.starts_with("multipart part 2 is malformed"), "{}", e.message);
        assert_eq!(run(b"no boundary here", None, 100).unwrap_err().kind, DecodeErrorKind::BadFraming);
    }

    /// Part bytes made of what a delimiter is made of: CRLFs, dashes and the boundary
    /// short of its last byte, so that parts come close to ending early.
    fn delimiter_lookalikes() -> impl Strategy<Value = Vec<u8>> {
        let near_miss = format!("\r\n--{}", &BOUNDARY[..BOUNDARY.len() - 1]).into_bytes();
        let piece = prop_oneof![
            Just(b"\r\n".to_vec()),
            Just(b"--".to_vec()),
            Just(near_miss),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn parts_round_trip_with_their_names(
            parts in prop::collection::vec(
                (prop::option::of("[a-z0-9_-][a-z0-9._-]{0,7}(/[a-z0-9_-]{1,8}){0,2}"), delimiter_lookalikes()),
                1..6,
            ),
            cuts in prop::collection::vec(0usize..2000, 0..8),
        ) {
            // A part holding the delimiter itself cannot be sent: an encoder picks another boundary.
            let delimiter = format!("\r\n--{BOUNDARY}").into_bytes();
            prop_assume!(parts.iter().all(|(_, bytes)| {
                memchr::memmem::find(&[b"\r\n".as_slice(), bytes].concat(), &delimiter).is_none()
            }));
            let encoded: Vec<(Option<&str>, &[u8])> = parts.iter().map(|(n, b)| (n.as_deref(), &b[..])).collect();
            let messages = run_in_chunks(&encode(BOUNDARY, &encoded), &cuts, Some("request.bin"), 1000).unwrap();
            let got: Vec<(String, Vec<u8>)> =
                messages.into_iter().map(|m| (m.name.unwrap(), m.payload.to_vec())).collect();
            let expected: Vec<(String, Vec<u8>)> = parts
                .into_iter()
                .map(|(name, bytes)| (name.unwrap_or_else(|| "request.bin".into()), bytes))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
