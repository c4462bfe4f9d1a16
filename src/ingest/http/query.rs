//! The request options of the API, from the query string or their header twins.

use hyper::header::HeaderMap;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `?file=` or `Spout-File:`: the file name of the request's messages.
    pub file: Option<String>,
    /// `?wait=commit` or `Spout-Wait: commit`.
    pub wait_commit: bool,
}

impl RequestOptions {
    /// The query wins over a header when both are given. Unknown parameters are
    /// ignored, as curl users expect; a header that is not UTF-8 is an error.
    pub fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<Self, String> {
        let mut options = RequestOptions::default();
        if let Some(value) = headers.get("spout-file") {
            let value = value.to_str().map_err(|_| "Spout-File is not valid UTF-8".to_string())?;
            options.file = Some(value.to_owned());
        }
        if let Some(value) = headers.get("spout-wait") {
            options.wait_commit = wait_value(value.to_str().unwrap_or(""))?;
        }
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "file" => options.file = Some(value.into_owned()),
                "wait" => options.wait_commit = wait_value(&value)?,
                _ => {}
            }
        }
        Ok(options)
    }
}

fn wait_value(value: &str) -> Result<bool, String> {
    match value {
        "commit" => Ok(true),
        "" | "none" => Ok(false),
        other => Err(format!("wait must be `commit` (or `none`), not `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("spout-file", "from/header.txt".parse().unwrap());
        let options = RequestOptions::parse(Some("wait=commit&file=a%2Fb.json&x=1"), &headers).unwrap();
        assert_eq!(options, RequestOptions { file: Some("a/b.json".into()), wait_commit: true });
        let options = RequestOptions::parse(None, &headers).unwrap();
        assert_eq!(options.file.as_deref(), Some("from/header.txt"));
        assert!(RequestOptions::parse(Some("wait=soon"), &HeaderMap::new()).is_err());
    }
}
