//! Helpers shared by the integration tests: each test file includes this module.
#![allow(dead_code)]

pub mod client;
pub mod sidecar;
