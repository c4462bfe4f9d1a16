//! The Grafana dashboard and the alert rules: importable, complete, and querying only
//! metric families and labels the sidecar exports.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::files;
use super::promql::{self, Query};

/// What the sidecar exports, as far as queries can tell: each family's labels, and for
/// label values that exist, the values.
#[derive(Default)]
pub struct Catalog {
    families: BTreeMap<String, Family>,
}

#[derive(Default)]
struct Family {
    labels: BTreeSet<String>,
    values: BTreeMap<String, BTreeSet<String>>,
    histogram: bool,
}

impl Catalog {
    pub fn add(&mut self, name: &str, histogram: bool, labels: impl IntoIterator<Item = (String, Option<String>)>) {
        let family = self.families.entry(name.to_owned()).or_default();
        family.histogram |= histogram;
        for (label, value) in labels {
            family.labels.insert(label.clone());
            family.values.entry(label).or_default().extend(value);
        }
    }

    /// The family a series name belongs to, and the labels that series has:
    /// `x_bucket` is histogram `x` plus `le`; `x_sum` and `x_count` are `x`.
    fn family_of(&self, series: &str) -> Option<(&Family, BTreeSet<String>)> {
        if let Some(family) = self.families.get(series) {
            return Some((family, family.labels.clone()));
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let family = self.families.get(series.strip_suffix(suffix)?).filter(|f| f.histogram)?;
            let mut labels = family.labels.clone();
            if *suffix == "_bucket" {
                labels.insert("le".into());
            }
            Some((family, labels))
        })
    }

    /// Fails unless every metric, matcher label and grouping label of `queries` exists;
    /// with `values`, the values of `label="value"` matchers must exist too (only a
    /// scrape after traffic knows them).
    pub fn assert_serves(&self, queries: &[Query], values: bool) {
        let from_prometheus = promql::target_labels();
        for query in queries {
            let context = format!("{}: {}", query.source, query.expr);
            let mut labels_below = BTreeMap::new();
            for selector in &query.selectors {
                let (family, labels) = self
                    .family_of(&selector.metric)
                    .unwrap_or_else(|| panic!("{context}: the sidecar exports no `{}`", selector.metric));
                for label in selector.labels.iter().filter(|l| !from_prometheus.contains(l.as_str())) {
                    assert!(labels.contains(label), "{context}: `{}` has no label `{label}`", selector.metric);
                }
                if values {
                    for (label, value) in selector.equal.iter().filter(|(l, _)| !from_prometheus.contains(l.as_str())) {
                        let known = family.values.get(label).cloned().unwrap_or_default();
                        assert!(
                            known.contains(value),
                            "{context}: `{}` never has {label}=\"{value}\" (seen: {known:?})",
                            selector.metric
                        );
                    }
                }
                labels_below.insert(selector.metric.clone(), labels);
            }
            for grouping in &query.groupings {
                for label in grouping.labels.iter().filter(|l| !from_prometheus.contains(l.as_str())) {
                    let somewhere = grouping.metrics.iter().any(|m| labels_below[m].contains(label));
                    assert!(somewhere, "{context}: groups by `{label}`, which none of {:?} has", grouping.metrics);
                }
            }
        }
    }
}

#[test]
fn dashboard_is_importable_and_covers_the_essentials() {
    let dashboard = files::json(&files::deploy_dir().join("grafana/spout-sidecar.json"));
    for field in ["title", "uid", "schemaVersion", "panels", "templating"] {
        assert!(dashboard.get(field).is_some(), "dashboard: no `{field}`");
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"datasource"), "dashboard: a datasource variable, so that import asks for one");
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "dashboard: panel id {} twice", panel["id"]);
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().expect("gridPos.x"), grid["w"].as_u64().expect("gridPos.w"));
        assert!(w > 0 && x + w <= 24, "panel {title}: outside the 24-column grid");
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title}: use the datasource variable");
            assert!(panel["targets"].as_array().is_some_and(|t| !t.is_empty()), "panel {title}: no query");
        }
    }
    let targets = promql::dashboard_targets();
    for target in &targets {
        let grouped = target.query.grouped_labels();
        for label in legend_labels(&target.legend) {
            assert!(
                grouped.contains(label),
                "{}: legend {{{{{label}}}}} names a label the query drops",
                target.query.source
            );
        }
    }
    let queried: BTreeSet<&str> =
        targets.iter().flat_map(|t| t.query.selectors.iter().map(|s| s.metric.as_str())).collect();
    for essential in [
        "spout_messages_received_total",
        "spout_batches_committed_total",
        "spout_batch_messages_bucket",
        "spout_batch_bytes_bucket",
        "spout_commit_duration_seconds_bucket",
        "spout_buffer_bytes",
        "spout_buffer_limit_bytes",
        "spout_messages_rejected_total",
        "spout_sink_errors_total",
        "spout_sink_state",
        "spout_open_batch_messages",
        "spout_process_resident_memory_bytes",
        "spout_process_cpu_seconds_total",
        "spout_process_open_fds",
    ] {
        assert!(queried.contains(essential), "dashboard: nothing shows {essential}");
    }
}

/// `{{label}}` placeholders of a Grafana legend.
fn legend_labels(legend: &str) -> Vec<&str> {
    legend.split("{{").skip(1).filter_map(|rest| rest.split_once("}}")).map(|(label, _)| label.trim()).collect()
}

#[test]
fn alert_rules_cover_the_failures_and_say_what_to_do() {
    let rules = promql::alert_rules();
    let names: Vec<&str> = rules.iter().filter_map(|(rule, _)| rule["alert"].as_str()).collect();
    for required in ["SpoutSinkDown", "SpoutBufferAlmostFull", "SpoutCommitsStalled"] {
        assert!(names.contains(&required), "alerts.yml: no {required}");
    }
    for (rule, query) in &rules {
        let context = &query.source;
        assert!(
            matches!(rule["labels"]["severity"].as_str(), Some("critical" | "warning")),
            "{context}: severity critical or warning"
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation].as_str().is_some_and(|s| !s.is_empty()),
                "{context}: no {annotation}"
            );
        }
        let by_instance = query.groupings.iter().any(|g| g.labels.iter().any(|l| l == "instance"));
        assert!(by_instance, "{context}: group by instance so the page says which sidecar");
        assert!(rule.get("for").is_none_or(Value::is_string), "{context}: `for` is a duration string");
    }
}
