//! promtool, Prometheus' own checker (Debian package `prometheus`), on the scrape
//! configuration and the alert rules, including the alert unit tests.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use super::files::{self, shown};

/// promtool; missing, the test fails with the install hint (.ci/run installs it):
/// unchecked Prometheus files are not known to load.
pub fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|out| out.status.success());
    assert!(found, "promtool is missing: `apt-get install prometheus` (.ci/run does)");
    Command::new("promtool")
}

fn run(mut command: Command) {
    let out = command.output().expect("promtool runs");
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = files::deploy_dir().join("prometheus");
    let tests = files::yaml(&dir.join("alerts_test.yml"));
    let exercised: Vec<String> = tests["tests"]
        .as_array()
        .expect("alert tests")
        .iter()
        .flat_map(|test| test["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .filter(|case| case["exp_alerts"].as_array().is_some_and(|alerts| !alerts.is_empty()))
        .filter_map(|case| case["alertname"].as_str().map(str::to_owned))
        .collect();
    for (rule, _) in super::promql::alert_rules() {
        let name = rule["alert"].as_str().expect("alert name");
        assert!(exercised.iter().any(|tested| tested == name), "alerts_test.yml: no test sees {name} fire");
    }
    let mut check = promtool();
    check.current_dir(&dir).args(["check", "rules", "alerts.yml"]);
    run(check);
    let mut unit_tests = promtool();
    unit_tests.current_dir(&dir).args(["test", "rules", "alerts_test.yml"]);
    run(unit_tests);
}

/// Debian builds Prometheus without Kubernetes discovery, so its promtool refuses
/// `kubernetes_sd_configs`: the check swaps that block for a static target and takes
/// the rest (relabelling, authorization, rule files) as written.
#[test]
fn prometheus_config_passes_promtool() {
    let source = files::deploy_dir().join("prometheus/prometheus.yml");
    let mut config = files::yaml(&source);
    let work = tempfile::tempdir().expect("temp dir");
    for job in config["scrape_configs"].as_array_mut().expect("scrape_configs") {
        let job = job.as_object_mut().expect("a scrape config");
        if job.remove("kubernetes_sd_configs").is_some() {
            job.insert("static_configs".into(), json!([{"targets": ["127.0.0.1:8080"]}]));
        }
        if let Some(Value::String(token)) = job.get("authorization").and_then(|a| a.get("credentials_file")) {
            assert!(Path::new(token).is_relative(), "{}: keep credentials_file beside the config", shown(&source));
            let token = work.path().join(token);
            fs::create_dir_all(token.parent().unwrap()).unwrap();
            fs::write(token, "token\n").unwrap();
        }
    }
    let rule_files: Vec<String> = serde_json::from_value(config["rule_files"].clone()).expect("rule_files");
    assert!(!rule_files.is_empty(), "{}: load the alert rules", shown(&source));
    for rules in &rule_files {
        fs::copy(source.with_file_name(rules), work.path().join(rules)).unwrap_or_else(|e| panic!("{rules}: {e}"));
    }
    let checked = work.path().join("prometheus.yml");
    fs::write(&checked, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let mut check = promtool();
    check.args(["check", "config"]).arg(&checked);
    run(check);
}
