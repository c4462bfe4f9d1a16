//! Checks everything under deploy/ against the sidecar itself, so that a manifest that
//! names a flag, an endpoint, a port or a metric the binary does not have fails here
//! rather than in a user's cluster.
//!
//! - every JSON and YAML file parses;
//! - Pachyderm pipeline specs carry the fields `pachctl create pipeline` needs, for the
//!   spout generation they target;
//! - every spout-sidecar command line (pipeline specs, pod patch, Deployment) parses
//!   with the binary's own option parser;
//! - probes, ports, grace periods and memory limits agree with those options;
//! - the Grafana dashboard and the alert rules are valid PromQL over metric families
//!   and labels the sidecar exports;
//! - a real Prometheus scraping a fresh sidecar finds a series for every dashboard
//!   query and every alert signal;
//! - promtool accepts the Prometheus configuration and passes the alert unit tests;
//! - the Dockerfile builds a release binary into a non-root image;
//! - against the running binary: its /metrics after known traffic (counters, HELP,
//!   promtool's lint, every queried series), the probe and scrape paths, and the
//!   example producers run under the sidecar as the pipeline specs run them.

mod dockerfile;
mod files;
mod kubernetes;
mod live;
mod monitoring;
mod pachyderm;
mod prometheus_server;
mod promql;
mod promtool;
mod scrape;
mod sidecar;
