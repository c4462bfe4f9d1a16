//! docs/openapi.json against the running server: every documented status of
//! every route is produced for real, and each answer matches its documented schema.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use rustix::fs::{mkfifoat, Mode, CWD};
use rustix::process::Signal;
use serde_json::{json, Value};

use crate::pfs::fake::FakePachd;
use crate::support::client::{self, Connection, Response};
use crate::support::sidecar::{eventually, Sidecar};

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("openapi.json parses")
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let mut node = spec;
            for part in reference.trim_start_matches("#/").split('/') {
                node = &node[part];
            }
            resolve(spec, node)
        }
        None => schema,
    }
}

/// OpenAPI 3.0's `nullable: true` is not JSON Schema: as JSON Schema it is `null`
/// among the types (and the values, where they are listed).
fn as_json_schema(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
                let kind = map.get("type").cloned().unwrap_or_else(|| panic!("nullable without a type: {map:?}"));
                map.insert("type".into(), json!([kind, "null"]));
                if let Some(Value::Array(values)) = map.get_mut("enum") {
                    values.push(Value::Null);
                }
            }
            map.values_mut().for_each(as_json_schema);
        }
        Value::Array(items) => items.iter_mut().for_each(as_json_schema),
        _ => {}
    }
}

/// Checks `value` against a schema of the spec with a JSON Schema validator: Draft 4,
/// which OpenAPI 3.0's schemas extend. The schema's `$ref`s point into the spec's
/// components, so the validator reads the schema inside a document that has them.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str) {
    let mut document = json!({"allOf": [schema], "components": spec["components"]});
    as_json_schema(&mut document);
    let validator = jsonschema::draft4::options()
        .build(&document)
        .unwrap_or_else(|e| panic!("{at}: the documented schema does not compile: {e}"));
    let errors: Vec<String> =
        validator.iter_errors(value).map(|e| format!("at {:?}: {e}", e.instance_path().to_string())).collect();
    assert!(errors.is_empty(), "{at}: {value} does not match its documented schema:\n{}", errors.join("\n"));
}

struct Conformance {
    spec: Value,
    seen: BTreeSet<(String, String, u16)>,
}

impl Conformance {
    fn record(&mut self, method: &str, path: &str, response: &Response) {
        let status = response.status;
        let operation = &self.spec["paths"][path][method.to_lowercase()];
        let documented = resolve(&self.spec, &operation["responses"][status.to_string()]);
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which is not documented: {}",
            response.text()
        );
        for (media, content) in documented["content"].as_object().unwrap() {
            let got = response.header("content-type").unwrap_or("");
            assert!(
                got.starts_with(media.as_str()),
                "{method} {path} {status}: content-type {got}, documented {media}"
            );
            if media == "application/json" {
                check(&self.spec, &content["schema"], &response.json(), &format!("{method} {path} {status}"));
            }
        }
        for header in documented.get("headers").and_then(Value::as_object).into_iter().flatten().map(|h| h.0) {
            assert!(response.header(header).is_some(), "{method} {path} {status}: header {header} missing");
        }
        self.seen.insert((method.to_owned(), path.to_owned(), status));
    }

    fn documented(&self) -> BTreeSet<(String, String, u16)> {
        let mut all = BTreeSet::new();
        for (path, operations) in self.spec["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                for status in operation["responses"].as_object().unwrap().keys() {
                    all.insert((method.to_uppercase(), path.clone(), status.parse().unwrap()));
                }
            }
        }
        all
    }
}

fn mkfifo(path: &std::path::Path) {
    mkfifoat(CWD, path, Mode::from_raw_mode(0o600)).unwrap();
}

#[test]
fn every_documented_answer_is_real_and_matches_its_schema() {
    let mut conf = Conformance { spec: spec(), seen: BTreeSet::new() };
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "t0ken").unwrap();
    let sink = format!("dir:{}", tmp.path().join("out").display());
    let token_arg = token.display().to_string();
    let sidecar = Sidecar::start(&[
        "--sink",
        &sink,
        "--auth-token-file",
        &token_arg,
        "--max-message-bytes",
        "1KiB",
        "--body-timeout",
        "300ms",
        "--max-batch-age",
        "50ms",
    ]);
    let addr = sidecar.addr.clone();
    let auth = ("Authorization", "Bearer t0ken");
    let post = |target: &str, headers: &[(&str, &str)], body: &[u8]| {
        let mut all = vec![auth];
        all.extend_from_slice(headers);
        client::request(&addr, "POST", target, &all, body)
    };
    let get = |target: &str| client::request(&addr, "GET", target, &[auth], b"");

    conf.record("POST", "/messages", &post("/messages?wait=commit", &[], b"hi"));
    conf.record("POST", "/messages", &post("/messages", &[], b"hi"));
    conf.record(
        "POST",
        "/messages",
        &post("/messages", &[("Content-Type", "application/vnd.spout.frames")], &[0, 0, 1]),
    );
    conf.record("POST", "/messages", &client::post(&addr, "/messages", "text/plain", b"no token"));
    conf.record("POST", "/messages", &post("/messages", &[], &[b'x'; 2048]));
    conf.record("POST", "/messages", &post("/messages?file=../up", &[], b"x"));
    conf.record("POST", "/messages", &post("/messages", &[("Content-Encoding", "br")], b"x"));
    let mut slow = Connection::tcp(&addr);
    let slow_answer =
        slow.raw(b"POST /messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nContent-Length: 10\r\n\r\n1");
    conf.record("POST", "/messages", &slow_answer);
    conf.record("POST", "/flush", &post("/flush?wait=commit", &[], b""));
    conf.record("POST", "/flush", &post("/flush", &[], b""));
    conf.record("POST", "/flush", &post("/flush?wait=later", &[], b""));
    conf.record("POST", "/flush", &client::request(&addr, "POST", "/flush", &[], b""));
    conf.record("GET", "/healthz", &client::get(&addr, "/healthz"));
    conf.record("GET", "/readyz", &client::get(&addr, "/readyz"));
    conf.record("GET", "/status", &get("/status"));
    conf.record("GET", "/status", &client::get(&addr, "/status"));
    conf.record("GET", "/metrics", &get("/metrics"));
    conf.record("GET", "/metrics", &client::get(&addr, "/metrics"));
    let id = post("/messages?wait=commit&file=a.txt", &[], b"a").json()["commit"].as_str().unwrap().to_owned();
    let (commit, file) = ("/commits/{commit}", "/commits/{commit}/files/{path}");
    conf.record("GET", commit, &get(&format!("/commits/{id}")));
    conf.record("GET", commit, &get("/commits/.tmp-1"));
    conf.record("GET", commit, &get("/commits/1"));
    conf.record("GET", commit, &client::get(&addr, &format!("/commits/{id}")));
    conf.record("GET", file, &get(&format!("/commits/{id}/files/a.txt")));
    conf.record("GET", file, &get(&format!("/commits/{id}/files/..%2Fa.txt")));
    conf.record("GET", file, &get(&format!("/commits/{id}/files/b.txt")));
    conf.record("GET", file, &client::get(&addr, &format!("/commits/{id}/files/a.txt")));
    drop(sidecar);

    // pfs://: a pipeline downstream that takes longer than the wait, then a pachd
    // that is not there.
    let mut pachd = FakePachd::start(None, None);
    pachd.pipeline("spout", "edges", 1.0, None);
    let sidecar = Sidecar::start(&["--sink", &pachd.uri("spout"), "--max-batch-age", "10ms"]);
    let addr = sidecar.addr.clone();
    let late = client::post(&addr, "/messages?wait=downstream&timeout=100ms", "text/plain", b"x");
    conf.record("POST", "/messages", &late);
    let id = late.json()["commit"].as_str().unwrap().to_owned();
    conf.record("GET", commit, &client::get(&addr, &format!("/commits/{id}?wait=downstream&timeout=10ms")));
    conf.record("GET", commit, &client::get(&addr, &format!("/commits/{id}?wait=downstream")));
    drop(sidecar);
    drop(pachd);
    let sidecar = Sidecar::start(&["--sink", "pfs://127.0.0.1:1/spout"]);
    conf.record("GET", commit, &client::get(&sidecar.addr, "/commits/1"));
    conf.record("GET", file, &client::get(&sidecar.addr, "/commits/1/files/a.txt"));
    drop(sidecar);

    // A pipe nobody reads: not ready; at shutdown, the wait=commit request gets 502
    // once the timeout passes, and new requests get 503 while it drains.
    let fifo = tmp.path().join("pipe");
    mkfifo(&fifo);
    let sink = format!("fifo:{}", fifo.display());
    let sidecar = Sidecar::start(&["--sink", &sink, "--shutdown-timeout", "1s"]);
    let addr = sidecar.addr.clone();
    conf.record(
        "GET",
        "/readyz",
        &eventually(Duration::from_secs(10), "readyz 503", || {
            let r = client::get(&addr, "/readyz");
            (r.status == 503).then_some(r)
        }),
    );
    let waiter = {
        let addr = addr.clone();
        std::thread::spawn(move || client::post(&addr, "/messages?wait=commit", "text/plain", b"never read"))
    };
    // Only a request taken in before SIGTERM waits for its commit and gets the 502;
    // its bytes in the buffer say it was.
    let held = spout_sidecar::buffer::charge(b"never read".len() as u64, 1);
    eventually(Duration::from_secs(10), "the wait=commit request to be taken in", || {
        (client::get(&addr, "/status").json()["buffer"]["used_bytes"] == held).then_some(())
    });
    sidecar.signal(Signal::TERM);
    conf.record(
        "POST",
        "/messages",
        &eventually(Duration::from_secs(5), "503 while draining", || {
            let r = client::post(&addr, "/messages", "text/plain", b"late");
            (r.status == 503).then_some(r)
        }),
    );
    conf.record("POST", "/messages", &waiter.join().unwrap());
    drop(sidecar);

    // A sink thread that panics on its first batch: dead, so not alive either, and
    // new messages are refused.
    let sink = format!("dir:{}", tmp.path().join("dead").display());
    let sidecar = Sidecar::start_with(&["--sink", &sink], |command| {
        command.env("SPOUT_TEST_PANIC", "sink:1");
    });
    let addr = sidecar.addr.clone();
    assert_eq!(client::post(&addr, "/messages?wait=commit", "text/plain", b"dies").status, 502);
    // The 502 can come while the thread unwinds, before the sidecar has seen it end.
    let dead = eventually(Duration::from_secs(10), "/healthz to say the sink thread died", || {
        let r = client::get(&addr, "/healthz");
        (r.status == 503).then_some(r)
    });
    conf.record("GET", "/healthz", &dead);
    conf.record("POST", "/messages", &client::post(&addr, "/messages", "text/plain", b"refused"));

    let missing: Vec<_> = conf.documented().difference(&conf.seen).cloned().collect();
    assert!(missing.is_empty(), "documented but never produced: {missing:?}");
    let _ = std::io::stderr().flush();
}
