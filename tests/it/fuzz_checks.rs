//! The fuzz targets' checks (`fuzz/src`) in `cargo test`: every input kept in
//! `tests/fuzz-regressions/<target>/` (seeds, and each input that once found a bug) is
//! replayed, and proptest drives the same checks with inputs shaped to reach past the
//! first header or segment, so CI keeps exploring a little on every run.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use proptest::prelude::*;

/// Runs `check` on every file kept for `target`, naming every one that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions").join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs kept in {}", dir.display());
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("a kept input reads");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "kept fuzz inputs fail again: {failed:#?}");
}

#[test]
fn ndjson_lines_regressions() {
    replay("ndjson_lines", checks::ndjson_lines);
}

#[test]
fn length_frames_regressions() {
    replay("length_frames", checks::length_frames);
}

#[test]
fn whole_body_regressions() {
    replay("whole_body", checks::whole_body);
}

#[test]
fn raw_splitter_regressions() {
    replay("raw_splitter", checks::raw_splitter);
}

#[test]
fn json_array_regressions() {
    replay("json_array", checks::json_array);
}

#[test]
fn multipart_regressions() {
    replay("multipart", checks::multipart);
}

#[test]
fn file_name_regressions() {
    replay("file_name", checks::file_name);
}

#[test]
fn tar_encoder_regressions() {
    replay("tar_encoder", checks::tar_encoder);
}

#[test]
fn the_reference_name_rule_is_the_documented_one() {
    for name in ["a", "2024/05/01/e.ndjson", ".hidden", "a..b", "...", &"x".repeat(255)] {
        assert!(checks::documented_rule_allows(name), "{name}");
    }
    for name in ["", "/a", "a/", "a//b", ".", "..", "a/../b", "a/./b", "a b", "a\0b", "é", &"x".repeat(256)] {
        assert!(!checks::documented_rule_allows(name), "{name}");
    }
}

/// Knob bytes for the framing checks: a message limit of `max`, chunk sizes `sizes`.
fn knobs(max: u16, sizes: &[u8]) -> Vec<u8> {
    let mut out = max.to_be_bytes().to_vec();
    out.push(sizes.len() as u8);
    out.extend_from_slice(sizes);
    out
}

/// Frame headers declaring small lengths, so that bodies get past the first header;
/// a declared length and the bytes that follow it need not agree.
fn frames_body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0u32..40, prop::collection::vec(any::<u8>(), 0..40)), 0..8).prop_map(|frames| {
        frames.into_iter().flat_map(|(declared, bytes)| declared.to_be_bytes().into_iter().chain(bytes)).collect()
    })
}

/// Lines of bytes where `\n` is common.
fn lines_body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..300)
}

/// A JSON array of strings, numbers and nested values, often with one piece of it
/// replaced by a token that may break it.
fn json_array_body() -> impl Strategy<Value = Vec<u8>> {
    let element = prop_oneof![
        "[a-z\\]\\[,\"\\\\ é]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        any::<i32>().prop_map(|n| n.to_string()),
        Just("-1.5e3".to_string()),
        Just("{\"a\": [true, null, {}]}".to_string()),
    ];
    let elements = prop::collection::vec(element, 0..6);
    let token = prop::sample::select(vec!["", ",", "]", "[", "\"", "\\", " ", "x", "0", "}", "\u{1}", "\\u12"]);
    (elements, prop::option::of((any::<prop::sample::Index>(), token))).prop_map(|(elements, mutation)| {
        let mut body = format!("[{}]", elements.join(", ")).into_bytes();
        if let Some((at, token)) = mutation {
            let at = at.index(body.len());
            body.splice(at..at + 1, token.bytes());
        }
        body
    })
}

fn sizes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..64, 0..7)
}

proptest! {
    #[test]
    fn lines_agree_with_the_reference(max in 0u16..48, sizes in sizes(), body in lines_body()) {
        let data = [knobs(max, &sizes), body].concat();
        checks::ndjson_lines(&data);
        checks::raw_splitter(&[[0].as_slice(), &data].concat());
    }

    #[test]
    fn frames_agree_with_the_reference(max in 0u16..48, sizes in sizes(), body in frames_body()) {
        let data = [knobs(max, &sizes), body].concat();
        checks::length_frames(&data);
        checks::raw_splitter(&[[1].as_slice(), &data].concat());
    }

    #[test]
    fn json_arrays_agree_with_serde_json(max in 0u16..40, sizes in sizes(), body in json_array_body()) {
        checks::json_array(&[knobs(max, &sizes), body].concat());
    }

    #[test]
    fn file_names_agree_with_the_documented_rule(name in "[a-z./_\\- \0é]{0,12}|[a-z/.]{250,260}") {
        checks::file_name(name.as_bytes());
    }

    #[test]
    fn tar_archives_read_back(data in prop::collection::vec(any::<u8>(), 0..3000)) {
        checks::tar_encoder(&data);
    }
}
