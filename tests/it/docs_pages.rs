//! The pages in docs/ state names and numbers; these tests hold them to the real binary
//! and to docs/openapi.json, so that neither can change without the other:
//! - every long flag of `spout-sidecar --help` is in docs/options.md with its variable,
//!   default and possible values, and every flag documented there exists;
//! - every metric family the binary serves after some traffic is in docs/metrics.md
//!   with its type, labels and label values, and every documented family is served,
//!   with a series at 0 for each documented label value from start-up;
//! - every status documented in docs/http-api.md for a route is in docs/openapi.json,
//!   and the other way round, and so are the `error` values.
//!

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::client::{self, Connection};
use crate::support::sidecar::{eventually, Sidecar, BIN};

/// How long the metrics test waits for what its traffic brings about.
const PATIENCE: Duration = Duration::from_secs(30);

fn page(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Fails with every problem found, one a line, rather than the first only.
fn report(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}: {} problem(s):\n- {}", problems.len(), problems.join("\n- "));
}

// ---------------------------------------------------------------------------------
// Markdown, read simply: headings, and tables as rows of cells.

/// One table row with the headings it is under and the table's header cells.
#[derive(Debug, Clone)]
struct Row {
    /// 1-based line number in the page.
    line: usize,
    /// The headings the table is under, outermost first: (level, text).
    headings: Vec<(usize, String)>,
    header: Vec<String>,
    cells: Vec<String>,
}

impl Row {
    /// The cell under the header cell `name` (compared without backticks).
    fn get(&self, name: &str) -> Option<&str> {
        let at = self.header.iter().position(|h| h.trim_matches('`') == name)?;
        self.cells.get(at).map(String::as_str)
    }
}

/// A line's cells if it is a table row, split at `|` not escaped as `\|`.
fn cells(line: &str) -> Option<Vec<String>> {
    let line = line.trim();
    let inner = line.strip_prefix('|')?.strip_suffix('|')?;
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => cells.last_mut().unwrap().push(chars.next().unwrap()),
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    Some(cells.into_iter().map(|c| c.trim().to_owned()).collect())
}

fn is_separator(cells: &[String]) -> bool {
    cells.iter().all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
}

/// Every body row of every table in `text` (header and separator rows left out).
fn table_rows(text: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut headings: Vec<(usize, String)> = Vec::new();
    let mut header: Option<Vec<String>> = None;
    let mut in_code_block = false;
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
            continue;
        }
        if in_code_block {
            continue;
        }
        if let Some(level) = heading_level(line) {
            headings.retain(|(l, _)| *l < level);
            headings.push((level, line[level..].trim().to_owned()));
            header = None;
            continue;
        }
        match cells(line) {
            None => header = None,
            Some(row) if header.is_none() => header = Some(row),
            Some(row) if is_separator(&row) => {}
            Some(row) => rows.push(Row {
                line: index + 1,
                headings: headings.clone(),
                header: header.clone().unwrap(),
                cells: row,
            }),
        }
    }
    rows
}

fn heading_level(line: &str) -> Option<usize> {
    let level = line.chars().take_while(|&c| c == '#').count();
    (level > 0 && line[level..].starts_with(' ')).then_some(level)
}

/// The contents of the `code spans` in `text`.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

// ---------------------------------------------------------------------------------
// The binary.

/// A command for the binary with none of the caller's `SPOUT_*` variables, which would
/// change both its behaviour and what `--help` prints.
fn sidecar_command() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SPOUT_") {
            command.env_remove(key);
        }
    }
    command
}

// ---------------------------------------------------------------------------------
// Options.

/// One option as `--help` prints it.
#[derive(Debug, Default)]
struct HelpOption {
    env: Option<String>,
    default: Option<String>,
    possible: Vec<String>,
}

/// The long flags of `--help` output with what it says of each.
fn parse_help(help: &str) -> BTreeMap<String, HelpOption> {
    let mut options: BTreeMap<String, HelpOption> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_possible = false;
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        // Flags start at most 6 columns in; their descriptions are indented further.
        if indent <= 6 && text.starts_with('-') {
            current = text.split([' ', ',']).find(|w| w.starts_with("--")).map(str::to_owned);
            if let Some(flag) = &current {
                options.entry(flag.clone()).or_default();
            }
            in_possible = false;
            continue;
        }
        let Some(option) = current.as_ref().and_then(|flag| options.get_mut(flag)) else { continue };
        if let Some(env) = text.strip_prefix("[env: ").and_then(|rest| rest.strip_suffix(']')) {
            option.env = Some(env.split('=').next().unwrap().to_owned());
        } else if let Some(default) = text.strip_prefix("[default: ").and_then(|rest| rest.strip_suffix(']')) {
            option.default = Some(default.to_owned());
        } else if text == "Possible values:" {
            in_possible = true;
        } else if in_possible && text.starts_with("- ") {
            option.possible.push(text[2..].split(':').next().unwrap().trim().to_owned());
        } else {
            in_possible = false;
        }
    }
    options
}

fn help_text(flag: &str) -> String {
    let output = sidecar_command().arg(flag).output().expect("run spout-sidecar");
    assert!(output.status.success(), "spout-sidecar {flag} failed: {output:?}");
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

#[test]
fn options_page_lists_every_flag_of_help_with_its_variable_and_default() {
    let help = parse_help(&help_text("--help"));
    assert!(help.len() > 20 && help.contains_key("--sink"), "--help did not parse: {help:?}");
    let mut problems = Vec::new();
    let mut documented: BTreeMap<String, Row> = BTreeMap::new();
    for row in table_rows(&page("options.md")) {
        let Some(option) = row.get("option") else { continue };
        let Some(span) = code_spans(option).into_iter().next() else { continue };
        let Some(flag) = span.split([' ', ',']).find(|w| w.starts_with("--")) else { continue };
        if documented.insert(flag.to_owned(), row.clone()).is_some() {
            problems.push(format!("docs/options.md documents `{flag}` twice (again at line {})", row.line));
        }
    }
    for flag in help.keys() {
        if !documented.contains_key(flag) {
            problems.push(format!("`{flag}` is in --help but not in docs/options.md"));
        }
    }
    for (flag, row) in &documented {
        let Some(option) = help.get(flag) else {
            problems.push(format!("docs/options.md line {} documents `{flag}`, which --help does not have", row.line));
            continue;
        };
        let at = format!("docs/options.md line {} (`{flag}`)", row.line);
        let variable = code_spans(row.get("variable").unwrap_or_default());
        match &option.env {
            Some(env) if variable != [env.clone()] => {
                problems.push(format!("{at}: the variable is `{env}` in --help, {variable:?} in the page"))
            }
            None if !variable.is_empty() => {
                problems.push(format!("{at}: the page names the variable {variable:?}, --help none"))
            }
            _ => {}
        }
        let default = code_spans(row.get("default").unwrap_or_default());
        match &option.default {
            Some(value) if default != [value.clone()] => {
                problems.push(format!("{at}: the default is `{value}` in --help, {default:?} in the page"))
            }
            None if !default.is_empty() => {
                problems.push(format!("{at}: the page gives the default {default:?}, --help none"))
            }
            _ => {}
        }
        if !option.possible.is_empty() {
            // `--layout message|batch`: the alternatives after the flag.
            let span = code_spans(row.get("option").unwrap()).remove(0);
            let listed: BTreeSet<&str> = span.split_whitespace().nth(1).unwrap_or("").split('|').collect();
            let possible: BTreeSet<&str> = option.possible.iter().map(String::as_str).collect();
            if listed != possible {
                problems.push(format!("{at}: the values are {possible:?} in --help, {listed:?} in the page"));
            }
        }
    }
    report("docs/options.md against spout-sidecar --help", problems);
}

#[test]
fn help_opens_by_naming_every_sink() {
    let sinks = ["fifo:", "dir:", "stdout:", "pfs://"];
    for flag in ["-h", "--help"] {
        let help = help_text(flag);
        let opening = help.split("\n\n").next().unwrap();
        let missing: Vec<_> = sinks.iter().filter(|sink| !opening.contains(*sink)).collect();
        assert!(missing.is_empty(), "the opening of `spout-sidecar {flag}` does not name {missing:?}:\n{opening}");
    }
}

// ---------------------------------------------------------------------------------
// Metrics.

/// What `/metrics` serves: family → (type, label → values seen).
type Families = BTreeMap<String, (String, BTreeMap<String, BTreeSet<String>>)>;

fn parse_exposition(text: &str) -> Families {
    let mut families: Families = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
            families.insert(name.to_owned(), (kind.to_owned(), BTreeMap::new()));
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| families.get(*base).is_some_and(|(kind, _)| kind == "histogram"))
            .unwrap_or(name);
        let Some((_, seen)) = families.get_mut(family) else { panic!("a series of no family: {line}") };
        // Label values here are plain words and numbers: no quotes or commas inside.
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (label, value) = pair.split_once('=').expect("label=value");
            if label != "le" {
                seen.entry(label.to_owned()).or_default().insert(value.trim_matches('"').to_owned());
            }
        }
    }
    families
}

/// What docs/metrics.md documents of a family.
struct DocumentedFamily {
    line: usize,
    kind: String,
    labels: BTreeMap<String, BTreeSet<String>>,
}

impl DocumentedFamily {
    /// Whether a label's values come from the configuration: the family has series
    /// only for what is configured (a `--source`), none at start-up without it.
    fn configured(&self) -> bool {
        self.labels.values().any(BTreeSet::is_empty)
    }
}

/// The labels cell: "`label`: `v1`, `v2`; `other`: as above", or "none".
fn documented_families(text: &str) -> BTreeMap<String, DocumentedFamily> {
    let mut families = BTreeMap::new();
    let mut known_values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in table_rows(text) {
        let Some(name) = row.get("family").and_then(|cell| code_spans(cell).into_iter().next()) else { continue };
        let mut labels = BTreeMap::new();
        for segment in row.get("labels").unwrap_or_default().split(';') {
            let mut spans = code_spans(segment).into_iter();
            let Some(label) = spans.next() else { continue };
            // A label documented without values in code spans takes values that depend
            // on the configuration (a source's name): it has no fixed set.
            let mut values: BTreeSet<String> = spans.collect();
            if values.is_empty() && segment.contains("as above") {
                values = known_values.get(&label).cloned().unwrap_or_default();
            }
            known_values.insert(label.clone(), values.clone());
            labels.insert(label, values);
        }
        let kind = row.get("type").unwrap_or_default().to_owned();
        families.insert(name, DocumentedFamily { line: row.line, kind, labels });
    }
    families
}

#[test]
fn metrics_page_lists_every_family_served_with_its_type_labels_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("out");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600)).expect("mkfifo");
    let socket = dir.path().join("http.sock");
    let raw = dir.path().join("raw.sock");
    let sink = format!("fifo:{}", fifo.display());
    let sidecar = Sidecar::start(&[
        "--sink",
        &sink,
        "--socket",
        socket.to_str().unwrap(),
        "--raw-socket",
        raw.to_str().unwrap(),
        "--max-batch-age",
        "20ms",
    ]);
    let metrics = || {
        let answer = client::get(&sidecar.addr, "/metrics");
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.text()
    };
    // No reader yet: the sink reports an error before the traffic below is committed.
    eventually(PATIENCE, "a sink error", || {
        (sidecar.metric("spout_sink_errors_total{kind=\"no_reader\"}") > 0).then_some(())
    });
    let reader = fifo.clone();
    std::thread::spawn(move || {
        if let Ok(mut pipe) = std::fs::File::open(reader) {
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        }
    });

    // Traffic over each transport, a refusal, and an unknown route.
    let answer = client::request(&sidecar.addr, "POST", "/messages?wait=commit", &[], b"over tcp");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = Connection::unix(&socket).request("POST", "/messages", &[], b"over the unix socket");
    assert_eq!(answer.status, 202, "{}", answer.text());
    let mut stream = std::os::unix::net::UnixStream::connect(&raw).expect("connect to --raw-socket");
    stream.write_all(b"over the raw socket\n").unwrap();
    drop(stream);
    let answer = client::request(&sidecar.addr, "POST", "/messages?file=../escape", &[], b"refused");
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert_eq!(client::get(&sidecar.addr, "/no-such-route").status, 404);
    // A fifo: sink keeps nothing readable: reads of commits are refused, on their routes.
    assert_eq!(client::get(&sidecar.addr, "/commits/1").status, 404);
    assert_eq!(client::get(&sidecar.addr, "/commits/1/files/a").status, 404);
    eventually(PATIENCE, "the raw socket's message", || {
        metrics().contains("spout_messages_received_total{transport=\"raw\"}").then_some(())
    });
    sidecar.flush();

    let served = parse_exposition(&metrics());
    let documented = documented_families(&page("metrics.md"));
    assert!(documented.len() > 20, "docs/metrics.md did not parse: {:?}", documented.keys());
    let mut problems = Vec::new();
    for (name, (kind, labels)) in &served {
        let Some(doc) = documented.get(name) else {
            problems.push(format!("`{name}` ({kind}) is served on /metrics but not in docs/metrics.md"));
            continue;
        };
        let at = format!("docs/metrics.md line {} (`{name}`)", doc.line);
        if &doc.kind != kind {
            problems.push(format!("{at}: the type is {kind} on /metrics, `{}` in the page", doc.kind));
        }
        for (label, values) in labels {
            let Some(listed) = doc.labels.get(label) else {
                problems.push(format!("{at}: the label `{label}` is served but not in the page"));
                continue;
            };
            for value in values.difference(listed).filter(|_| !listed.is_empty()) {
                problems.push(format!("{at}: `{label}=\"{value}\"` is served but the page does not list `{value}`"));
            }
        }
        for label in doc.labels.keys().filter(|label| !labels.contains_key(*label)) {
            problems.push(format!("{at}: the page lists the label `{label}`, which /metrics does not serve"));
        }
    }
    for (name, doc) in &documented {
        if !served.contains_key(name) && !doc.configured() {
            problems
                .push(format!("docs/metrics.md line {} documents `{name}`, which /metrics does not serve", doc.line));
        }
    }
    report("docs/metrics.md against /metrics", problems);
}

/// Before any traffic, every labelled family serves each label value the page lists,
/// as the page promises; the request latency starts with each route's success code.
#[test]
fn every_documented_label_value_is_served_at_0_from_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", dir.path().join("out").display());
    let sidecar = Sidecar::start(&["--sink", &sink]);
    let answer = client::get(&sidecar.addr, "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let served = parse_exposition(&answer.text());
    let mut problems = Vec::new();
    for (name, doc) in documented_families(&page("metrics.md")).into_iter().filter(|(_, doc)| !doc.configured()) {
        let at = format!("docs/metrics.md line {} (`{name}`)", doc.line);
        let seen = served.get(&name).map(|(_, labels)| labels.clone()).unwrap_or_default();
        for (label, listed) in &doc.labels {
            let expected: BTreeSet<String> = match (name.as_str(), label.as_str()) {
                ("spout_request_duration_seconds", "route") => {
                    listed.iter().filter(|r| *r != "other").cloned().collect()
                }
                ("spout_request_duration_seconds", "code") => ["200", "202"].map(String::from).into(),
                _ => listed.clone(),
            };
            let served = seen.get(label).cloned().unwrap_or_default();
            let missing: Vec<&String> = expected.difference(&served).collect();
            if !missing.is_empty() {
                problems.push(format!("{at}: no series at start-up for `{label}` = {missing:?}"));
            }
        }
    }
    for line in answer.text().lines().filter(|l| !l.starts_with('#') && l.contains('{')) {
        if !line.ends_with(" 0") && line != "spout_sink_state{state=\"up\"} 1" {
            problems.push(format!("not 0 before any traffic: {line}"));
        }
    }
    report("docs/metrics.md against a fresh sidecar's /metrics", problems);
}

// ---------------------------------------------------------------------------------
// HTTP answers.

/// `POST /messages` in a heading's code span.
fn route_of(heading: &str) -> Option<String> {
    code_spans(heading).into_iter().find(|span| {
        let mut words = span.split(' ');
        let method = words.next().unwrap_or("");
        let path = words.next().unwrap_or("");
        ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"].contains(&method)
            && path.starts_with('/')
            && words.next().is_none()
    })
}

#[test]
fn http_api_page_and_openapi_document_the_same_answers() {
    let spec: serde_json::Value = serde_json::from_str(&page("openapi.json")).expect("openapi.json is JSON");
    let mut in_spec: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, operations) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            let codes = operation["responses"].as_object().expect("responses").keys().cloned().collect();
            in_spec.insert(format!("{} {path}", method.to_uppercase()), codes);
        }
    }
    let spec_errors: BTreeSet<String> = spec["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
        .as_array()
        .expect("the Error schema's enum")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();

    let mut in_page: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut page_errors: BTreeMap<String, usize> = BTreeMap::new();
    for row in table_rows(&page("http-api.md")) {
        if let Some(cell) = row.get("error") {
            for error in code_spans(cell) {
                page_errors.entry(error).or_insert(row.line);
            }
        }
        let status = row.cells[0].trim_matches(['`', '*']);
        if status.len() != 3 || !status.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // The innermost heading naming a route; a status under no route heading (the
        // answers any route may give) is not per route.
        if let Some(route) = row.headings.iter().rev().find_map(|(_, text)| route_of(text)) {
            in_page.entry(route).or_default().entry(status.to_owned()).or_insert(row.line);
        }
    }
    assert!(in_page.len() >= 6, "docs/http-api.md did not parse: {in_page:?}");

    let mut problems = Vec::new();
    for (route, codes) in &in_spec {
        let Some(documented) = in_page.get(route) else {
            problems.push(format!("docs/openapi.json has `{route}`; docs/http-api.md has no section for it"));
            continue;
        };
        for code in codes.iter().filter(|code| !documented.contains_key(*code)) {
            problems.push(format!("docs/openapi.json has {code} for `{route}`; docs/http-api.md does not"));
        }
    }
    for (route, codes) in &in_page {
        let Some(specified) = in_spec.get(route) else {
            problems.push(format!("docs/http-api.md documents `{route}`; docs/openapi.json does not have it"));
            continue;
        };
        for (code, line) in codes.iter().filter(|(code, _)| !specified.contains(*code)) {
            problems.push(format!(
                "docs/http-api.md line {line} documents {code} for `{route}`; docs/openapi.json does not"
            ));
        }
    }
    for error in spec_errors.iter().filter(|e| !page_errors.contains_key(*e)) {
        problems.push(format!("docs/openapi.json's Error enum has `{error}`; no `error` column of docs/http-api.md"));
    }
    for (error, line) in page_errors.iter().filter(|(e, _)| !spec_errors.contains(*e)) {
        problems.push(format!("docs/http-api.md line {line} gives the error `{error}`, not in openapi.json's enum"));
    }
    report("docs/http-api.md against docs/openapi.json", problems);
}

/// The pages link to each other; a renamed page or heading must not leave a dead link.
#[test]
fn links_between_pages_resolve() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut problems = Vec::new();
    let pages: Vec<PathBuf> = std::fs::read_dir(&docs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    for path in &pages {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        for (at, _) in text.match_indices("](") {
            let target = text[at + 2..].split(')').next().unwrap();
            if target.contains("://") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let linked = if file.is_empty() { path.clone() } else { docs.join(file) };
            let Ok(linked_text) = std::fs::read_to_string(&linked).or_else(|e| {
                // A link to a directory (`../fuzz/`) is fine if it exists.
                if linked.is_dir() {
                    Ok(String::new())
                } else {
                    Err(e)
                }
            }) else {
                problems.push(format!("docs/{name} links to `{target}`, which does not exist"));
                continue;
            };
            if !anchor.is_empty()
                && !linked_text.lines().filter_map(|l| heading_level(l).map(|n| &l[n..])).any(|h| slug(h) == anchor)
            {
                problems.push(format!("docs/{name} links to `{target}`, which has no heading `#{anchor}`"));
            }
        }
    }
    report("links in docs/", problems);
}

/// A heading's anchor as GitHub makes it: lower case, spaces to `-`, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}
