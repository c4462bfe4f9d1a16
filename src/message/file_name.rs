//! The names of the files in a commit: the ones clients may give (`Spout-File`,
//! `?file=`, a multipart `filename`) and the ones the sidecar gives when they don't.
//!
//! A client's name is a relative path whose segments use only `[A-Za-z0-9._-]`, at most 255
//! bytes in all. That keeps every name safe to join under a commit directory or to
//! put in a tar header: nothing can climb out (`..`), hide as `.`, start at the root,
//! or mean different things on different file systems (empty segments, NUL, spaces,
//! non-ASCII). The reason a name is refused is returned to the client, so it says
//! exactly what is wrong.

/// The longest name accepted, in bytes: a common file system's limit for one segment,
/// and comfortably inside a PAX tar header.
pub const MAX_NAME_BYTES: usize = 255;

/// The name of a message sent without one: zero-padded so names sort in arrival order.
pub fn default_name(seq: u64) -> String {
    numbered("msg-", seq)
}

/// The name of the one file a batch becomes with `--layout batch`.
pub fn batch_name(first_seq: u64) -> String {
    numbered("batch-", first_seq)
}

/// `prefix` and `number` in 20 digits, all a `u64` can have. Written digit by digit:
/// `format!` with a width costs a good part of what a small message costs in all under
/// `--layout message`, where every message is named.
fn numbered(prefix: &str, mut number: u64) -> String {
    let mut digits = [b'0'; 20];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (number % 10) as u8;
        number /= 10;
    }
    let mut name = String::with_capacity(prefix.len() + digits.len());
    name.push_str(prefix);
    name.push_str(std::str::from_utf8(&digits).expect("ASCII digits"));
    name
}

/// A client-given name that breaks the rules, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("file name {shown} is not allowed: {why}")]
pub struct BadFileName {
    /// The name, escaped and cut short.
    shown: String,
    why: String,
}

/// Checks a client-given file name against the rules above.
pub fn validate(name: &str) -> Result<(), BadFileName> {
    problem(name).map_err(|why| BadFileName { shown: shown(name), why })
}

fn problem(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("it is {} bytes long, the limit is {MAX_NAME_BYTES}", name.len()));
    }
    if let Some(at) = name.find('\0') {
        return Err(format!("it has a NUL byte at byte {at}"));
    }
    if name.starts_with('/') {
        return Err("it is an absolute path; names are relative to the repository's root".into());
    }
    for (index, segment) in name.split('/').enumerate() {
        let number = index + 1;
        match segment {
            "" => return Err(format!("path segment {number} is empty (`//` or a trailing `/`)")),
            "." | ".." => return Err(format!("path segment {number} is `{segment}`")),
            _ => {}
        }
        if let Some(bad) = segment.chars().find(|&c| !is_allowed(c)) {
            return Err(format!("path segment {number} has {bad:?}; segments may only use A-Z a-z 0-9 . _ -"));
        }
    }
    Ok(())
}

fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The name as it can safely appear in an error: escaped, and cut short when long.
fn shown(name: &str) -> String {
    const SHOWN_CHARS: usize = 64;
    if name.chars().count() <= SHOWN_CHARS {
        format!("{name:?}")
    } else {
        let head: String = name.chars().take(SHOWN_CHARS).collect();
        format!("{head:?}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &str) -> String {
        validate(name).expect_err(name).to_string()
    }

    #[test]
    fn default_names_are_zero_padded_to_sort_in_order() {
        for seq in [0, 7, 1_700_000_000_123_456_789, u64::MAX] {
            assert_eq!(default_name(seq), format!("msg-{seq:020}"));
            assert_eq!(batch_name(seq), format!("batch-{seq:020}"));
        }
    }

    #[test]
    fn accepts_relative_names_of_allowed_characters() {
        for name in ["a", "data.json", "2024/05/01/events-7.ndjson", ".hidden", "a..b", "_-.", &"x".repeat(255)] {
            assert_eq!(validate(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_climbing_out_and_dot_segments() {
        assert!(refused("../x").contains("segment 1 is `..`"));
        assert!(refused("a/../../x").contains("segment 2 is `..`"));
        assert!(refused("a/./b").contains("segment 2 is `.`"));
        assert!(refused(".").contains("segment 1 is `.`"));
    }

    #[test]
    fn refuses_absolute_paths() {
        let why = refused("/etc/passwd");
        assert!(why.contains("absolute"), "{why}");
        assert!(why.starts_with("file name \"/etc/passwd\""), "{why}");
    }

    #[test]
    fn refuses_empty_names_and_segments() {
        assert!(refused("").contains("empty"));
        assert!(refused("a//b").contains("segment 2 is empty"));
        assert!(refused("a/").contains("segment 2 is empty"));
    }

    #[test]
    fn refuses_nul_escaping_it_in_the_reason() {
        let why = refused("a\0b");
        assert!(why.contains("NUL byte at byte 1"), "{why}");
        assert!(why.contains(r#""a\0b""#), "the reason shows the NUL escaped: {why}");
    }

    #[test]
    fn refuses_names_over_255_bytes_and_shows_them_cut_short() {
        let why = refused(&"y".repeat(300));
        assert!(why.contains("300 bytes long, the limit is 255"), "{why}");
        assert!(why.len() < 200, "{why}");
        // 128 two-byte characters: 256 bytes, fewer than 255 characters.
        assert!(refused(&"é".repeat(128)).contains("256 bytes"));
    }

    #[test]
    fn refuses_characters_outside_the_set() {
        assert!(refused("a b").contains("has ' '"));
        assert!(refused("dir/naïve.txt").contains("segment 2 has 'ï'"));
        assert!(refused(r"a\b").contains(r"has '\\'"));
        assert!(refused("x:y").contains("has ':'"));
    }
}
