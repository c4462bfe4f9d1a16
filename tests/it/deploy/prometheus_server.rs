//! A real Prometheus server (Debian's `prometheus`) scrapes a freshly started sidecar
//! that has taken no traffic, and every dashboard panel's query, the dashboard's
//! variables and what every alert watches are evaluated through Prometheus' HTTP API:
//! each must return a series, so that a new deployment shows 0 rather than "No data"
//! and an alert has a series to fire on. None of the alerts fires for a healthy,
//! idle sidecar.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::promql;
use crate::support::sidecar::{eventually, Sidecar};

/// How often the test's Prometheus scrapes: short, so that `rate()` has its two
/// samples within seconds.
const SCRAPE_INTERVAL: &str = "1s";

struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `target` (HOST:PORT) as job
    /// `spout-sidecar`, with its data under `dir`.
    fn start(dir: &Path, target: &str) -> Prometheus {
        super::promtool::promtool(); // fails with the install hint when Prometheus is missing
        let config = dir.join("prometheus.yml");
        let scrape = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n\
             scrape_configs:\n  - job_name: spout-sidecar\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(&config, scrape).unwrap();
        // Prometheus takes no port 0; a port the kernel just handed out is free enough.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus runs");
        let prometheus = Prometheus { child, addr };
        eventually(Duration::from_secs(60), "Prometheus to be ready", || prometheus.get("/-/ready").ok());
        prometheus
    }

    /// GET `path` with `params` URL-encoded; the body, or the error curl reports.
    fn get_with(&self, path: &str, params: &[(&str, &str)]) -> Result<String, String> {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--fail-with-body", "--max-time", "20", "-G"]).arg(format!("http://{}{path}", self.addr));
        for (name, value) in params {
            curl.arg("--data-urlencode").arg(format!("{name}={value}"));
        }
        let out = curl.output().expect("curl runs");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(body)
        } else {
            Err(format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    fn get(&self, path: &str) -> Result<String, String> {
        self.get_with(path, &[])
    }

    /// The series an instant query returns.
    fn query(&self, expr: &str) -> Vec<Value> {
        let body = self.get_with("/api/v1/query", &[("query", expr)]).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"));
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_dashboard_query_and_alert_signal_has_a_series_from_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", tmp.path().join("out").display());
    let sidecar = Sidecar::start(&["--sink", &sink]);
    let prometheus = Prometheus::start(tmp.path(), &sidecar.addr);
    // rate() and increase() need two samples; three scrapes leave no doubt.
    eventually(Duration::from_secs(60), "three scrapes of the sidecar", || {
        let scrapes = prometheus.query("count_over_time(up{job=\"spout-sidecar\"}[1m])");
        let up = prometheus.query("up{job=\"spout-sidecar\"}");
        let done = scrapes.first().and_then(|s| s["value"][1].as_str()).is_some_and(|n| n.parse::<u32>().unwrap() >= 3);
        (done && up.first().is_some_and(|s| s["value"][1] == "1")).then_some(())
    });

    let mut empty = Vec::new();
    for target in promql::dashboard_targets() {
        if prometheus.query(&target.query.expr).is_empty() {
            empty.push(format!("{}: {}", target.query.source, target.query.expr));
        }
    }
    for (rule, query) in promql::alert_rules() {
        let name = rule["alert"].as_str().unwrap();
        let firing = prometheus.query(&query.expr);
        assert!(firing.is_empty(), "alert {name} fires for a healthy, idle sidecar: {firing:?}");
        for signal in promql::alert_signals(&query.expr) {
            if prometheus.query(&signal).is_empty() {
                empty.push(format!("alert {name}: {signal}"));
            }
        }
    }
    assert!(empty.is_empty(), "no series for:\n{}", empty.join("\n"));

    // The dashboard's variables list the jobs and instances that export the budget.
    let dashboard = super::files::json(&super::files::deploy_dir().join("grafana/spout-sidecar.json"));
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(definition) = variable["definition"].as_str() else { continue };
        let (series, label) = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|args| args.rsplit_once(','))
            .unwrap_or_else(|| panic!("a variable this test cannot evaluate: {definition}"));
        let series = series.replace("$job", ".*");
        let body = prometheus.get_with(&format!("/api/v1/label/{}/values", label.trim()), &[("match[]", &series)]);
        let values: Value = serde_json::from_str(&body.unwrap()).unwrap();
        assert!(values["data"].as_array().is_some_and(|v| !v.is_empty()), "{definition} lists nothing: {values}");
    }
}
