//! What every `--source` shares, refused at start-up through the real binary before
//! any broker is asked: a sink the checkpoints cannot be read back from, a disk
//! spool beside a source, and two sources that would write one checkpoint file.

use std::process::Command;

use crate::support::sidecar::BIN;

/// A queue URI that parses without reaching anything: nothing here connects.
const SOURCE: &str = "sqs://127.0.0.1:9/000000000000/orders?endpoint=http://127.0.0.1:9";

/// Runs the sidecar with `args`; its exit code and standard error.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(BIN).args(["--listen", "127.0.0.1:0"]).args(args).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_sink_that_keeps_nothing_readable_exits_2_rather_than_guess_where_to_resume() {
    let (code, stderr) = refused(&["--source", SOURCE, "--sink", "stdout:"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read the sources' checkpoints back from the sink"), "{stderr}");
}

#[test]
fn a_source_beside_a_spool_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", dir.path().join("out").display());
    let spool = dir.path().join("spool").display().to_string();
    let (code, stderr) = refused(&["--source", SOURCE, "--sink", &sink, "--spool-dir", &spool]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--source and --spool-dir cannot be used together"), "{stderr}");
}

#[test]
fn two_sources_with_one_checkpoint_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", dir.path().join("out").display());
    let (code, stderr) = refused(&["--source", SOURCE, "--source", SOURCE, "--sink", &sink]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("two --source name the same checkpoint `sqs.orders`"), "{stderr}");
}
