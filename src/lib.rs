//! spout-sidecar: streams messages into Pachyderm spouts.
//!
//! The data flows through the modules in this order:
//!
//! ```text
//! ingest (http, raw_socket, framing) ─► buffer (budget) ─► batch ─► encode (layout, tar) ─► sink
//!                                                                       fifo / dir / stdout / pfs
//!            requests waiting with wait=commit ◄── ack ◄───────────────────────────────────┘
//! ```
//!
//! Each layer imports only those after it (and `message`, `metrics`, `cancel`, which
//! every layer shares); `ack` carries verdicts back up. `pipeline` assembles the
//! layers, `listeners` binds the sockets, and `shutdown` stops them in order.

pub mod ack;
pub mod batch;
pub mod buffer;
pub mod cancel;
pub mod config;
pub mod encode;
pub mod ingest;
pub mod listeners;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod supervisor;
