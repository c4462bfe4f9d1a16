//! The PromQL of the dashboard and the alert rules, parsed with a real PromQL parser:
//! which metrics each query selects, with which label matchers, and which labels it
//! groups by.

use std::collections::BTreeSet;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, LabelModifier};

use super::files;

/// Labels Prometheus attaches to every scraped series rather than the sidecar: the
/// target's own, and those deploy/prometheus/prometheus.yml relabels onto it.
pub fn target_labels() -> BTreeSet<String> {
    let config = files::yaml(&files::deploy_dir().join("prometheus/prometheus.yml"));
    let relabelled = config["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| job["relabel_configs"].as_array().cloned().unwrap_or_default())
        .filter_map(|rule| rule["target_label"].as_str().map(str::to_owned))
        .filter(|label| !label.starts_with("__"));
    ["job".to_owned(), "instance".to_owned()].into_iter().chain(relabelled).collect()
}

pub struct Selector {
    pub metric: String,
    /// `label="value"` matchers: the value must exist for the query to show anything.
    pub equal: Vec<(String, String)>,
    /// Every label a matcher names, whatever its operator.
    pub labels: Vec<String>,
}

/// Labels grouped by (`by`, `without`, `on`, `ignoring`), with the metrics below them.
pub struct Grouping {
    pub labels: Vec<String>,
    pub metrics: Vec<String>,
}

pub struct Query {
    /// Where the query is, for failure messages.
    pub source: String,
    pub expr: String,
    pub selectors: Vec<Selector>,
    pub groupings: Vec<Grouping>,
}

impl Query {
    pub fn parse(source: String, expr: &str) -> Query {
        let ast = parser::parse(expr).unwrap_or_else(|e| panic!("{source}: not PromQL: {e}\n{expr}"));
        let mut query = Query { source, expr: expr.to_owned(), selectors: Vec::new(), groupings: Vec::new() };
        query.walk(&ast);
        query
    }

    /// Records what `expr` selects and groups; returns the metrics below it.
    fn walk(&mut self, expr: &Expr) -> Vec<String> {
        match expr {
            Expr::VectorSelector(vs) => self.select(vs),
            Expr::MatrixSelector(ms) => self.select(&ms.vs),
            Expr::Aggregate(agg) => {
                let mut metrics = self.walk(&agg.expr);
                if let Some(param) = &agg.param {
                    metrics.extend(self.walk(param));
                }
                self.group(agg.modifier.as_ref(), &metrics);
                metrics
            }
            Expr::Binary(bin) => {
                let mut metrics = self.walk(&bin.lhs);
                metrics.extend(self.walk(&bin.rhs));
                self.group(bin.modifier.as_ref().and_then(|m| m.matching.as_ref()), &metrics);
                metrics
            }
            Expr::Call(call) => call.args.args.iter().flat_map(|arg| self.walk(arg)).collect(),
            Expr::Paren(paren) => self.walk(&paren.expr),
            Expr::Unary(unary) => self.walk(&unary.expr),
            Expr::Subquery(sub) => self.walk(&sub.expr),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => Vec::new(),
        }
    }

    fn select(&mut self, vs: &parser::VectorSelector) -> Vec<String> {
        let metric =
            vs.name.clone().unwrap_or_else(|| panic!("{}: select metrics by name: {}", self.source, self.expr));
        let matchers = &vs.matchers.matchers;
        self.selectors.push(Selector {
            metric: metric.clone(),
            equal: matchers
                .iter()
                .filter(|m| matches!(m.op, MatchOp::Equal))
                .map(|m| (m.name.clone(), m.value.clone()))
                .collect(),
            labels: matchers.iter().map(|m| m.name.clone()).collect(),
        });
        vec![metric]
    }

    fn group(&mut self, modifier: Option<&LabelModifier>, metrics: &[String]) {
        if let Some(modifier) = modifier {
            let labels = modifier.labels().labels.clone();
            self.groupings.push(Grouping { labels, metrics: metrics.to_vec() });
        }
    }

    /// Every label the query can hand to a legend: those it groups by.
    pub fn grouped_labels(&self) -> BTreeSet<&str> {
        self.groupings.iter().flat_map(|g| g.labels.iter().map(String::as_str)).collect()
    }
}

/// Grafana's variables, replaced by what they stand for in a plain query.
fn without_grafana_variables(expr: &str) -> String {
    let plain = expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*");
    assert!(!plain.contains('$'), "a Grafana variable this test does not know: {expr}");
    plain
}

pub struct DashboardTarget {
    pub query: Query,
    pub legend: String,
}

pub fn dashboard_targets() -> Vec<DashboardTarget> {
    let dashboard = files::json(&files::deploy_dir().join("grafana/spout-sidecar.json"));
    let panels = dashboard["panels"].as_array().expect("dashboard panels");
    panels
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("untitled").to_owned();
            panel["targets"].as_array().cloned().unwrap_or_default().into_iter().map(move |target| {
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel {title}: a target without expr"));
                DashboardTarget {
                    query: Query::parse(format!("dashboard panel `{title}`"), &without_grafana_variables(expr)),
                    legend: target["legendFormat"].as_str().unwrap_or_default().to_owned(),
                }
            })
        })
        .collect()
}

pub fn alert_rules() -> Vec<(serde_json::Value, Query)> {
    let rules = files::yaml(&files::deploy_dir().join("prometheus/alerts.yml"));
    rules["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .map(|rule| {
            let name = rule["alert"].as_str().unwrap_or_else(|| panic!("a rule without `alert`: {rule}"));
            let query = Query::parse(format!("alert {name}"), rule["expr"].as_str().expect("rule expr"));
            (rule, query)
        })
        .collect()
}

/// Every query of the dashboard and the alerts.
pub fn all_queries() -> Vec<Query> {
    let mut queries: Vec<Query> = dashboard_targets().into_iter().map(|t| t.query).collect();
    queries.extend(alert_rules().into_iter().map(|(_, q)| q));
    queries
}

/// What an alert watches, without its threshold: for `X > 0.8`, `X`; for
/// `A > 0 unless B > 0`, `A` and `B`. Each must be a series even while the alert is
/// quiet, or the alert could never fire.
pub fn alert_signals(expr: &str) -> Vec<String> {
    fn walk(expr: &Expr, out: &mut Vec<String>) {
        match expr {
            Expr::Paren(paren) => walk(&paren.expr, out),
            Expr::Binary(bin) if bin.op.is_set_operator() => {
                walk(&bin.lhs, out);
                walk(&bin.rhs, out);
            }
            Expr::Binary(bin) if bin.op.is_comparison_operator() => match (&*bin.lhs, &*bin.rhs) {
                (signal, Expr::NumberLiteral(_)) | (Expr::NumberLiteral(_), signal) => walk(signal, out),
                _ => out.push(expr.to_string()),
            },
            _ => out.push(expr.to_string()),
        }
    }
    let mut signals = Vec::new();
    walk(&parser::parse(expr).unwrap_or_else(|e| panic!("not PromQL: {e}\n{expr}")), &mut signals);
    signals
}
