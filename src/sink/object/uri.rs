//! The object-store URIs `--sink` takes, as Pachyderm's egress writes them, and
//! the client each one opens.
//!
//! - `s3://ENDPOINT/BUCKET/DIR` or `s3://BUCKET/DIR`: the first segment is an
//!   endpoint when it has a port or a dot (`minio:9000`, `s3.eu-west-1.amazonaws.com`),
//!   else the bucket (endpoint from `AWS_ENDPOINT_URL`, else AWS). A bucket whose
//!   name has dots is given with its endpoint in front.
//! - `gs://BUCKET/DIR`
//! - `wasb://CONTAINER@ACCOUNT/DIR` (`ACCOUNT` may be the full host,
//!   `ACCOUNT.blob.core.windows.net`).
//!
//! Credentials, region and the like come from each cloud's usual environment
//! variables, read by `object_store`'s `from_env` builders (see docs/sinks.md).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

/// A parsed object-store `--sink` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUri {
    pub store: Store,
    /// The key prefix commits go under, without slashes at either end; may be empty.
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    S3 { endpoint: Option<String>, bucket: String },
    Gcs { bucket: String },
    Azure { container: String, account: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad sink `{uri}`: {why}; expected {expected}")]
pub struct BadObjectUri {
    uri: String,
    why: String,
    expected: &'static str,
}

pub const S3_FORM: &str = "s3://[ENDPOINT/]BUCKET/DIR";
pub const GS_FORM: &str = "gs://BUCKET/DIR";
pub const WASB_FORM: &str = "wasb://CONTAINER@ACCOUNT/DIR";

/// How long one request may take before it counts as failed and is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl ObjectUri {
    pub fn parse(uri: &str) -> Result<Self, BadObjectUri> {
        let (scheme, rest) = uri.split_once("://").unwrap_or((uri, ""));
        let expected = match scheme {
            "s3" => S3_FORM,
            "gs" => GS_FORM,
            _ => WASB_FORM,
        };
        let bad = |why: &str| BadObjectUri { uri: uri.into(), why: why.into(), expected };
        if !uri.contains("://") {
            return Err(bad("it has no `://`"));
        }
        let (first, path) = rest.split_once('/').unwrap_or((rest, ""));
        if first.is_empty() {
            return Err(bad("the bucket is missing"));
        }
        let (store, dir) = match scheme {
            "s3" if first.contains(':') || first.contains('.') => {
                let (bucket, dir) = path.split_once('/').unwrap_or((path, ""));
                if bucket.is_empty() {
                    return Err(bad("the bucket after the endpoint is missing"));
                }
                (Store::S3 { endpoint: Some(first.into()), bucket: bucket.into() }, dir)
            }
            "s3" => (Store::S3 { endpoint: None, bucket: first.into() }, path),
            "gs" => (Store::Gcs { bucket: first.into() }, path),
            _ => {
                let (container, account) = first.split_once('@').ok_or_else(|| bad("the `CONTAINER@` is missing"))?;
                let account = account.split('.').next().unwrap_or_default();
                if container.is_empty() || account.is_empty() {
                    return Err(bad("the container or the account is empty"));
                }
                (Store::Azure { container: container.into(), account: account.into() }, path)
            }
        };
        let dir = dir.trim_matches('/');
        if dir.split('/').any(|segment| segment == "." || segment == "..") || dir.contains("//") {
            return Err(bad("the directory has an empty, `.` or `..` segment"));
        }
        Ok(ObjectUri { store, dir: dir.into() })
    }

    /// The client for this store, configured from the environment. Retries are
    /// off here: the sink retries itself, per object, and counts them.
    pub fn open_client(&self) -> object_store::Result<Arc<dyn ObjectStore>> {
        let retry = RetryConfig { max_retries: 0, retry_timeout: REQUEST_TIMEOUT, ..RetryConfig::default() };
        // Set as keys, not as `ClientOptions`, which would replace what the
        // environment set (AWS_ALLOW_HTTP, proxies, ...).
        let timeouts =
            [(ClientConfigKey::Timeout, REQUEST_TIMEOUT), (ClientConfigKey::ConnectTimeout, CONNECT_TIMEOUT)]
                .map(|(key, value)| (key, humantime::format_duration(value).to_string()));
        Ok(match &self.store {
            Store::S3 { endpoint, bucket } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
                if let Some(endpoint) = endpoint {
                    // An endpoint in the URI has no scheme: https, unless AWS_ALLOW_HTTP allows http.
                    let allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
                    let scheme = if allow_http { "http" } else { "https" };
                    builder = builder.with_endpoint(format!("{scheme}://{endpoint}"));
                }
                for (key, value) in timeouts {
                    builder = builder.with_config(AmazonS3ConfigKey::Client(key), value);
                }
                Arc::new(builder.build()?)
            }
            Store::Gcs { bucket } => {
                let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket).with_retry(retry);
                for (key, value) in timeouts {
                    builder = builder.with_config(GoogleConfigKey::Client(key), value);
                }
                Arc::new(builder.build()?)
            }
            Store::Azure { container, account } => {
                let mut builder = MicrosoftAzureBuilder::from_env()
                    .with_account(account)
                    .with_container_name(container)
                    .with_retry(retry);
                for (key, value) in timeouts {
                    builder = builder.with_config(AzureConfigKey::Client(key), value);
                }
                Arc::new(builder.build()?)
            }
        })
    }

    /// The bucket (or container), for messages that say what is missing.
    pub fn bucket(&self) -> &str {
        match &self.store {
            Store::S3 { bucket, .. } | Store::Gcs { bucket } => bucket,
            Store::Azure { container, .. } => container,
        }
    }
}

impl fmt::Display for ObjectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.store {
            Store::S3 { endpoint: Some(endpoint), bucket } => write!(f, "s3://{endpoint}/{bucket}")?,
            Store::S3 { endpoint: None, bucket } => write!(f, "s3://{bucket}")?,
            Store::Gcs { bucket } => write!(f, "gs://{bucket}")?,
            Store::Azure { container, account } => write!(f, "wasb://{container}@{account}")?,
        }
        if !self.dir.is_empty() {
            write!(f, "/{}", self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(uri: &str) -> ObjectUri {
        ObjectUri::parse(uri).unwrap()
    }

    #[test]
    fn parses_pachyderm_egress_urls() {
        let s3 = parsed("s3://minio.ns:9000/bucket/a/b/");
        assert_eq!(s3.store, Store::S3 { endpoint: Some("minio.ns:9000".into()), bucket: "bucket".into() });
        assert_eq!((s3.dir.as_str(), s3.to_string().as_str()), ("a/b", "s3://minio.ns:9000/bucket/a/b"));
        let bare = parsed("s3://bucket/dir");
        assert_eq!(bare.store, Store::S3 { endpoint: None, bucket: "bucket".into() });
        assert_eq!(bare.dir, "dir");
        assert_eq!(parsed("s3://bucket").dir, "");
        assert_eq!(parsed("gs://gs-bucket/gs-dir").store, Store::Gcs { bucket: "gs-bucket".into() });
        let wasb = parsed("wasb://default-container@storage-account/az-dir");
        assert_eq!(
            wasb.store,
            Store::Azure { container: "default-container".into(), account: "storage-account".into() }
        );
        let host = parsed("wasb://c@acct.blob.core.windows.net/d");
        assert_eq!(host.store, Store::Azure { container: "c".into(), account: "acct".into() });
        assert_eq!(host.to_string(), "wasb://c@acct/d");
    }

    #[test]
    fn says_what_is_wrong() {
        let cases = [
            ("s3://", "the bucket is missing; expected s3://[ENDPOINT/]BUCKET/DIR"),
            ("s3://host:9000/", "the bucket after the endpoint is missing"),
            ("gs:/bucket", "it has no `://`"),
            ("wasb://account/dir", "the `CONTAINER@` is missing; expected wasb://CONTAINER@ACCOUNT/DIR"),
            ("wasb://@account/dir", "the container or the account is empty"),
            ("s3://b/x/../y", "the directory has an empty, `.` or `..` segment"),
            ("gs://b/x//y", "the directory has an empty"),
        ];
        for (uri, expected) in cases {
            let error = ObjectUri::parse(uri).unwrap_err().to_string();
            assert!(error.contains(expected), "{uri}: {error}");
        }
    }
}
