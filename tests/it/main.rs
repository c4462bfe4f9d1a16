//! Every integration test of spout-sidecar, in one binary: one module per area, the
//! helpers they share in `support`. One binary links the crate once instead of once
//! per file, and the test harness spreads all tests over its threads.
//!
//! The tests run in one process, many at a time: a test that reads process-wide
//! state (a global counter, the log subscriber) may only judge what it caused
//! itself. Most tests start the real binary (`support::sidecar`), which gives each
//! its own process; `fifo_sink` and `pfs_sink` drive the library in process.
//!
//! Run them with `cargo xtask test` (it installs what they need; see xtask/);
//! `cargo xtask test -- NAME` runs the tests whose path contains NAME, e.g.
//! `cargo xtask test -- http_api::`.

mod clients;
mod crash;
mod deploy;
mod docs_pages;
mod downstream;
mod encodings;
mod fifo_chaos;
mod fifo_holder;
mod fifo_sink;
mod fuzz_checks;
mod hostile_clients;
mod http2;
mod http_api;
mod lifecycle;
mod loadtest_smoke;
mod object;
mod openapi;
mod pfs;
mod pfs_binary;
mod pfs_finish;
mod pfs_sink;
mod pfs_writers;
mod pipe_sinks;
mod schemathesis;
mod senders;
mod shutdown;
mod sink_outages;
mod source_amqp;
mod source_kafka;
mod source_sqs;
mod sources;
mod spool;
mod support;
mod thread_death;
mod tls;
