//! The object-store sinks (`s3://`, `gs://`, `wasb://`) against real local servers
//! started by `servers`: moto_server for S3 (and for Cloud Storage's S3-compatible XML
//! API, see gs.rs), Azurite for Azure Blob Storage.

mod gs;
mod s3;
pub(crate) mod servers;
mod wasb;
