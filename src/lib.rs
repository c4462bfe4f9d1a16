//! spout-sidecar: streams messages into Pachyderm spouts.
//!
//! The data flows through the modules in this order:
//!
//! ```text
//! ingest (http, raw_socket, framing) ─► buffer (budget) ─► batch ─► sink thread
//!                                                                   │ layout → tar → fifo / dir / stdout
//!            requests waiting with wait=commit ◄── ack ◄────────────┘
//! ```

pub mod ack;
pub mod batch;
pub mod buffer;
pub mod config;
pub mod ingest;
pub mod listeners;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod shutdown;
pub mod sink;
pub mod supervisor;
pub mod tar;
