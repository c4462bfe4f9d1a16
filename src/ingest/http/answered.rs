//! Counts and times every answer of the API: `spout_requests_total{code}` and
//! `spout_request_duration_seconds{route,code}`.
//!
//! Looking a labelled child up (`with_label_values`) hashes its labels under a lock
//! and the code must first become a string: on the single-POST path that was a
//! noticeable share of a request's CPU. Each thread keeps the children it has used,
//! so a request past the first of its kind costs two atomic updates.

use std::cell::RefCell;
use std::time::Duration;

use prometheus::{Histogram, IntCounter};

use crate::metrics::METRICS;

/// The children of one (route, code): a handful per thread in practice.
struct Children {
    route: &'static str,
    code: u16,
    requests: IntCounter,
    duration: Histogram,
}

thread_local! {
    static RESOLVED: RefCell<Vec<Children>> = const { RefCell::new(Vec::new()) };
}

/// Records one answer with status `code` to `route`, which took `took`.
pub fn record(route: &'static str, code: u16, took: Duration) {
    RESOLVED.with_borrow_mut(|resolved| {
        let index = match resolved.iter().position(|c| c.code == code && c.route == route) {
            Some(index) => index,
            None => {
                let label = code.to_string();
                resolved.push(Children {
                    route,
                    code,
                    requests: METRICS.requests.with_label_values(&[&label]),
                    duration: METRICS.request_duration.with_label_values(&[route, &label]),
                });
                resolved.len() - 1
            }
        };
        let children = &resolved[index];
        children.requests.inc();
        children.duration.observe(took.as_secs_f64());
    });
}
