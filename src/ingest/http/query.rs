//! The request options of the API, from the query string or their header twins.

use hyper::header::HeaderMap;

use crate::ingest::framing::Named;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `?file=` or `Spout-File:`: the file name of the request's messages.
    pub file: Option<String>,
    /// `?wait=commit` or `Spout-Wait: commit`.
    pub wait_commit: bool,
    /// `?framing=` or `Spout-Framing:`: how to cut the body, whatever its `Content-Type`.
    pub framing: Option<Named>,
}

/// A request option that cannot be understood (answered 400 `bad_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadOption {
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("wait must be `commit` (or `none`), not `{0}`")]
    Wait(String),
    #[error("framing must be one of raw, ndjson, frames, multipart, json-array, not `{0}`")]
    Framing(String),
}

impl RequestOptions {
    /// The query wins over a header when both are given. Unknown parameters are
    /// ignored, as curl users expect; a header that is not UTF-8 is an error.
    pub fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<Self, BadOption> {
        let mut options = RequestOptions::default();
        let header = |name: &'static str, shown: &'static str| {
            headers.get(name).map(|value| value.to_str().map_err(|_| BadOption::NotUtf8(shown))).transpose()
        };
        if let Some(value) = header("spout-file", "Spout-File")? {
            options.file = Some(value.to_owned());
        }
        if let Some(value) = header("spout-wait", "Spout-Wait")? {
            options.wait_commit = wait_value(value)?;
        }
        if let Some(value) = header("spout-framing", "Spout-Framing")? {
            options.framing = Some(framing_value(value)?);
        }
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "file" => options.file = Some(value.into_owned()),
                "wait" => options.wait_commit = wait_value(&value)?,
                "framing" => options.framing = Some(framing_value(&value)?),
                _ => {}
            }
        }
        Ok(options)
    }
}

fn wait_value(value: &str) -> Result<bool, BadOption> {
    match value {
        "commit" => Ok(true),
        "" | "none" => Ok(false),
        other => Err(BadOption::Wait(other.to_owned())),
    }
}

fn framing_value(value: &str) -> Result<Named, BadOption> {
    value.trim().parse().map_err(|_| BadOption::Framing(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("spout-file", "from/header.txt".parse().unwrap());
        let options = RequestOptions::parse(Some("wait=commit&file=a%2Fb.json&x=1"), &headers).unwrap();
        assert_eq!(options, RequestOptions { file: Some("a/b.json".into()), wait_commit: true, framing: None });
        let options = RequestOptions::parse(None, &headers).unwrap();
        assert_eq!(options.file.as_deref(), Some("from/header.txt"));
        assert_eq!(
            RequestOptions::parse(Some("wait=soon"), &HeaderMap::new()).unwrap_err().to_string(),
            "wait must be `commit` (or `none`), not `soon`"
        );
        let mut latin1 = HeaderMap::new();
        latin1.insert("spout-wait", hyper::header::HeaderValue::from_bytes(b"comm\xe9t").unwrap());
        assert_eq!(RequestOptions::parse(None, &latin1), Err(BadOption::NotUtf8("Spout-Wait")));
    }

    #[test]
    fn framing_by_query_or_header() {
        let mut headers = HeaderMap::new();
        headers.insert("spout-framing", "ndjson".parse().unwrap());
        assert_eq!(RequestOptions::parse(None, &headers).unwrap().framing, Some(Named::Ndjson));
        let options = RequestOptions::parse(Some("framing=json-array"), &headers).unwrap();
        assert_eq!(options.framing, Some(Named::JsonArray), "the query wins");
        for (name, named) in [("raw", Named::Raw), ("frames", Named::Frames), ("multipart", Named::Multipart)] {
            let options = RequestOptions::parse(Some(&format!("framing={name}")), &HeaderMap::new()).unwrap();
            assert_eq!(options.framing, Some(named));
        }
        assert_eq!(
            RequestOptions::parse(Some("framing=json"), &HeaderMap::new()).unwrap_err().to_string(),
            "framing must be one of raw, ndjson, frames, multipart, json-array, not `json`"
        );
    }
}
