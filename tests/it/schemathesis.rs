//! Fuzzes the HTTP API from docs/openapi.json with schemathesis (PyPI, pinned in
//! tests/requirements.txt): a bounded number of generated requests, and none may
//! get a 5xx, an undocumented status or an answer off its schema.

use std::process::Command;

use crate::support::python;
use crate::support::sidecar::Sidecar;

#[test]
fn schemathesis_finds_no_server_error_or_schema_violation() {
    let schemathesis = python::script("schemathesis");
    let probe = Command::new(&schemathesis).arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "{} does not run: install tests/requirements.txt (`cargo xtask test` does)",
        schemathesis.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", tmp.path().join("out").display());
    // A short batch age keeps generated wait=commit requests quick.
    let sidecar = Sidecar::start(&["--sink", &sink, "--max-batch-age", "10ms"]);
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let output = Command::new(&schemathesis)
        .args(["run", spec, "--url"])
        .arg(format!("http://{}", sidecar.addr))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            "--max-examples", "40", "--seed", "7", "--workers", "1", "--no-color",
            "--phases", "examples,coverage,fuzzing",
            "--suppress-health-check", "all",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(tmp.path())
        .output()
        .expect("run schemathesis");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis found problems:\n{report}\nsidecar log:\n{}", sidecar.log());
}
