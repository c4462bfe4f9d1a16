//! Finding and reading the files under deploy/.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The path as a reader of a failure message knows it: relative to the repository.
pub fn shown(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(path).display().to_string()
}

/// Every file under deploy/ whose name ends with one of `extensions`, in a stable order.
pub fn with_extension(extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![deploy_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", shown(&dir))) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| extensions.iter().any(|e| ext == *e)) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", shown(path)))
}

pub fn json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: not JSON: {e}", shown(path)))
}

/// Every document of a YAML stream (`---` separated), as JSON values.
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: not YAML: {e}", shown(path))))
        .filter(|doc| !doc.is_null())
        .collect()
}

pub fn yaml(path: &Path) -> Value {
    let mut docs = yaml_documents(path);
    assert_eq!(docs.len(), 1, "{}: expected one YAML document", shown(path));
    docs.remove(0)
}

#[test]
fn every_json_and_yaml_file_parses() {
    let json_files = with_extension(&["json"]);
    let yaml_files = with_extension(&["yml", "yaml"]);
    assert!(json_files.len() >= 4, "the dashboard, the pod patch and the pipeline specs");
    assert!(yaml_files.len() >= 4, "the scrape config, the alerts, their tests and the Deployment");
    for path in &json_files {
        assert!(json(path).is_object() || json(path).is_array(), "{}: empty", shown(path));
    }
    for path in &yaml_files {
        assert!(!yaml_documents(path).is_empty(), "{}: no document", shown(path));
    }
}

/// Every string value stored under `key` anywhere in the JSON and YAML files of
/// deploy/, with the file it came from.
pub fn values_of_key(key: &str) -> Vec<(String, String)> {
    fn walk(value: &Value, key: &str, file: &str, found: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match v.as_str() {
                        Some(s) if k == key => found.push((file.to_owned(), s.to_owned())),
                        _ => walk(v, key, file, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, key, file, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    for path in with_extension(&["json"]) {
        walk(&json(&path), key, &shown(&path), &mut found);
    }
    for path in with_extension(&["yml", "yaml"]) {
        for doc in yaml_documents(&path) {
            walk(&doc, key, &shown(&path), &mut found);
        }
    }
    found
}
