//! The object-store sinks (`s3://`, `wasb://`) against real local servers started by
//! `servers`: moto_server for S3, Azurite for Azure Blob Storage.

mod s3;
pub(crate) mod servers;
mod wasb;
