//! The file names clients may give. (Stub: being written.)

/// Checks a client-given file name against the contract's rules.
pub fn validate(name: &str) -> Result<(), String> {
    let _ = name;
    Ok(())
}
