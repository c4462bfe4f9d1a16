//! The Python interpreter the tests run: for the fake pachd, the README's `requests`
//! snippet, the supervised example producers and schemathesis.
//!
//! `cargo xtask test` makes a virtualenv from tests/requirements.txt and names its
//! interpreter in `SPOUT_TEST_PYTHON`. Whatever `python3` happens to be on the PATH
//! may lack those packages, or have other versions of them, so without the variable
//! a test that needs Python fails at once and says how to run it.

use std::path::PathBuf;
use std::process::Command;

const VAR: &str = "SPOUT_TEST_PYTHON";

/// The interpreter named by `SPOUT_TEST_PYTHON`.
pub fn interpreter() -> PathBuf {
    match std::env::var_os(VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!(
            "{VAR} is not set, and this test runs Python with the packages of tests/requirements.txt: \
             run the tests with `cargo xtask test`, which makes that virtualenv (target/test-venv) and \
             sets {VAR}; or point {VAR} at a Python that has those packages"
        ),
    }
}

/// A command running the interpreter.
pub fn command() -> Command {
    Command::new(interpreter())
}

/// A console script that the requirements install beside the interpreter, such as
/// `schemathesis`: the one of that environment, not another on the PATH.
pub fn script(name: &str) -> PathBuf {
    let python = interpreter();
    let script = python.with_file_name(name);
    if python.parent().is_some_and(|dir| dir.as_os_str().is_empty()) {
        return script; // `python3` alone: its scripts are on the PATH too
    }
    assert!(
        script.is_file(),
        "{} is missing: install tests/requirements.txt into the Python of {VAR} (`cargo xtask test` does)",
        script.display()
    );
    script
}
