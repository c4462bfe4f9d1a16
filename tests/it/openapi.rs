//! docs/openapi.json against the running server: every documented status of
//! every route is produced for real, and each answer matches its documented schema.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use crate::support::client::{self, Connection, Response};
use crate::support::sidecar::{eventually, Sidecar};
use serde_json::Value;

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

/// The subset of JSON Schema the spec uses: $ref, allOf, type, nullable, required,
/// properties, items, enum, minimum.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(spec, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for part in all {
            check(spec, part, value, at);
        }
    }
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        let ok = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => panic!("schema type {other} not handled"),
        };
        assert!(ok, "{at}: {value} is not {kind}");
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        assert!(options.contains(value), "{at}: {value} not in {options:?}");
    }
    if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64) {
        assert!(value.as_f64().unwrap() >= minimum, "{at}: {value} < {minimum}");
    }
    for field in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        let field = field.as_str().unwrap();
        assert!(value.get(field).is_some(), "{at}: required field {field} missing in {value}");
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            if let Some(inner) = value.get(name) {
                check(spec, property, inner, &format!("{at}.{name}"));
            }
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, item) in values.iter().enumerate() {
            check(spec, items, item, &format!("{at}[{i}]"));
        }
    }
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
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
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
    sidecar.signal(libc::SIGTERM);
    conf.record(
        "POST",
        "/messages",
        &eventually(Duration::from_secs(5), "503 while draining", || {
            let r = client::post(&addr, "/messages", "text/plain", b"late");
            (r.status == 503).then_some(r)
        }),
    );
    conf.record("POST", "/messages", &waiter.join().unwrap());

    let missing: Vec<_> = conf.documented().difference(&conf.seen).cloned().collect();
    assert!(missing.is_empty(), "documented but never produced: {missing:?}");
    let _ = std::io::stderr().flush();
}
