//! `mode=s3-events`: each SQS message is an S3 event notification, and each object
//! it says was created (`ObjectCreated:*`) becomes one message named by its key,
//! read with the object-store sinks' S3 client (`object_store`, the same AWS
//! environment).
//!
//! What a notification comes to:
//! - objects gone before they are read are logged and left out; a notification
//!   left with nothing to commit (that, `s3:TestEvent` sent when notifications are
//!   configured, events of other kinds) is deleted and counted `skipped`;
//! - a key that is not a valid file name (`message::file_name`), an object larger
//!   than `--max-message-bytes`, a body that is no notification: nothing of it is
//!   committed and the notification is left in the queue (`refused`), to come
//!   back until the queue's redrive policy moves it to its dead-letter queue for a
//!   person to look at, since deleting it would lose the object without a trace;
//! - an object that cannot be read for another reason (S3 down): the notification
//!   is left to come back once its visibility timeout ends, and read again then.

use std::collections::HashMap;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;

use crate::message::{file_name, Incoming};
use crate::sink::object::uri::{ObjectUri, Store};

/// An object a notification names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub bucket: String,
    /// Decoded: S3 sends keys URL-encoded, with `+` for a space.
    pub key: String,
    pub size: u64,
}

/// What a notification's body says.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// The objects created (possibly none: other events only, or a test event).
    Created(Vec<Created>),
    /// Not a notification, or a key that cannot be a file name: why.
    Refused(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    #[serde(rename = "Records", default)]
    records: Vec<Record>,
    #[serde(rename = "Event", default)]
    event: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    event_name: String,
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: Bucket,
    object: Object,
}

#[derive(Deserialize)]
struct Bucket {
    name: String,
}

#[derive(Deserialize)]
struct Object {
    key: String,
    #[serde(default)]
    size: u64,
}

pub fn parse(body: &str) -> Notice {
    let notification: Notification = match serde_json::from_str(body) {
        Ok(notification) => notification,
        Err(error) => return Notice::Refused(format!("not an S3 event notification: {error}")),
    };
    if notification.records.is_empty() && notification.event.as_deref() != Some("s3:TestEvent") {
        return Notice::Refused("an S3 event notification without Records".into());
    }
    let mut created = Vec::new();
    for record in notification.records.into_iter().filter(|r| r.event_name.starts_with("ObjectCreated:")) {
        let key: String = form_urlencoded::parse(format!("k={}", record.s3.object.key).as_bytes())
            .next()
            .map(|(_, key)| key.into_owned())
            .unwrap_or_default();
        if let Err(bad) = file_name::validate(&key) {
            return Notice::Refused(format!("object {} of bucket {}: {bad}", key, record.s3.bucket.name));
        }
        created.push(Created { bucket: record.s3.bucket.name, key, size: record.s3.object.size });
    }
    Notice::Created(created)
}

/// What reading a notification's objects came to.
#[derive(Debug)]
pub enum Fetched {
    /// The objects as messages, those gone left out (none if every one is).
    Read { messages: Vec<Incoming>, bytes: u64 },
    /// One is larger than the message limit: why.
    Refused(String),
    /// One could not be read now: why.
    Failed(String),
}

/// The S3 clients, one per bucket, opened from the environment as they are needed.
#[derive(Debug, Default)]
pub struct Objects {
    buckets: HashMap<String, Arc<dyn ObjectStore>>,
}

impl Objects {
    pub async fn fetch(&mut self, created: &[Created], max_bytes: u64) -> Fetched {
        if let Some(large) = created.iter().find(|c| c.size > max_bytes) {
            return Fetched::Refused(too_large(large, large.size, max_bytes));
        }
        let (mut messages, mut bytes) = (Vec::new(), 0);
        for object in created {
            let store = match self.store(&object.bucket) {
                Ok(store) => store,
                Err(error) => return Fetched::Failed(format!("cannot open bucket {}: {error}", object.bucket)),
            };
            let read = match store.get(&Path::from(object.key.as_str())).await {
                Ok(read) if read.meta.size > max_bytes => {
                    return Fetched::Refused(too_large(object, read.meta.size, max_bytes))
                }
                Ok(read) => read.bytes().await,
                Err(error) => Err(error),
            };
            match read {
                Ok(payload) => {
                    bytes += payload.len() as u64;
                    messages.push(Incoming {
                        name: Some(object.key.clone()),
                        payload: payload.into(),
                        line: false,
                        origin: None,
                    });
                }
                Err(object_store::Error::NotFound { .. }) => {
                    tracing::warn!("object {} of bucket {} is gone: skipped", object.key, object.bucket);
                }
                Err(error) => {
                    return Fetched::Failed(format!("cannot read {} of bucket {}: {error}", object.key, object.bucket))
                }
            }
        }
        Fetched::Read { messages, bytes }
    }

    fn store(&mut self, bucket: &str) -> object_store::Result<Arc<dyn ObjectStore>> {
        if let Some(store) = self.buckets.get(bucket) {
            return Ok(store.clone());
        }
        let uri = ObjectUri { store: Store::S3 { endpoint: None, bucket: bucket.to_owned() }, dir: String::new() };
        let store = uri.open_client()?;
        self.buckets.insert(bucket.to_owned(), store.clone());
        Ok(store)
    }
}

fn too_large(object: &Created, size: u64, max_bytes: u64) -> String {
    format!(
        "object {} of bucket {} has {size} bytes, more than --max-message-bytes {max_bytes}",
        object.key, object.bucket
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: &str, key: &str) -> String {
        format!(r#"{{"eventName":"{event}","s3":{{"bucket":{{"name":"b"}},"object":{{"key":"{key}","size":3}}}}}}"#)
    }

    #[test]
    fn created_objects_are_named_by_their_decoded_keys() {
        let body = format!(
            r#"{{"Records":[{},{},{}]}}"#,
            record("ObjectCreated:Put", "dir%2Fa-1.txt"),
            record("ObjectRemoved:Delete", "gone"),
            record("ObjectCreated:CompleteMultipartUpload", "b/c_2")
        );
        let created = |key: &str| Created { bucket: "b".into(), key: key.into(), size: 3 };
        assert_eq!(parse(&body), Notice::Created(vec![created("dir/a-1.txt"), created("b/c_2")]));
    }

    #[test]
    fn test_events_name_nothing_and_bad_bodies_or_keys_are_refused() {
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
        assert_eq!(parse(test), Notice::Created(vec![]));
        let Notice::Refused(why) = parse("hello") else { panic!("a body that is no JSON") };
        assert!(why.starts_with("not an S3 event notification"), "{why}");
        let spaced = format!(r#"{{"Records":[{}]}}"#, record("ObjectCreated:Put", "a+b.txt"));
        let Notice::Refused(why) = parse(&spaced) else { panic!("a key with a space") };
        assert!(why.contains("object a b.txt of bucket b: file name"), "{why}");
    }
}
