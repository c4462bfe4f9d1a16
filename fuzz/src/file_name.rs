//! Checks for the file-name validator against the documented rule, restated here
//! another way (as whole-string tests rather than per segment), so that the two must
//! agree on every name: accepted exactly when the rule allows it. A refusal's reason
//! goes back to the client, so it must say it is about a file name and stay short
//! however long the name.

use spout_sidecar::message::file_name::validate;

/// The longest reason a refusal may give: the name is shown cut to 64 characters,
/// each escaped in at most 10 bytes, plus the explanation.
const MAX_REASON_BYTES: usize = 1024;

/// The rule of docs/http-api.md ("File names"): a relative path of `/`-separated
/// segments of `[A-Za-z0-9._-]`, at most 255 bytes; no empty segment (so no leading,
/// trailing or doubled `/`), and no `.` or `..` segment.
pub fn documented_rule_allows(name: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"._-/".contains(&b);
    // Bracketed in `/`, every segment is found between two slashes.
    let bracketed = format!("/{name}/");
    (1..=255).contains(&name.len())
        && name.bytes().all(allowed)
        && !bracketed.contains("//")
        && !bracketed.contains("/./")
        && !bracketed.contains("/../")
}

pub fn file_name(data: &[u8]) {
    let name = String::from_utf8_lossy(data);
    match validate(&name) {
        Ok(()) => assert!(documented_rule_allows(&name), "accepted {name:?}, which the rule refuses"),
        Err(reason) => {
            let reason = reason.to_string();
            assert!(!documented_rule_allows(&name), "refused {name:?}, which the rule allows: {reason}");
            assert!(reason.starts_with("file name "), "{reason}");
            assert!(reason.len() <= MAX_REASON_BYTES, "a {}-byte reason", reason.len());
        }
    }
}
