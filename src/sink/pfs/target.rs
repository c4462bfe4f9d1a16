//! Where the `pfs://` sink commits: the parsed URI, where its auth token comes
//! from, and the `auto` detection inside a Pachyderm 2.x worker.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use thiserror::Error;

/// pachd's port on its Kubernetes Service.
pub const DEFAULT_PORT: u16 = 30650;
/// The worker's local pachd peer, used when the worker's pachctl config names none.
const WORKER_PACHD: &str = "localhost:1653";
pub const DEFAULT_BRANCH: &str = "master";
pub const DEFAULT_PROJECT: &str = "default";
/// Where a Pachyderm 2.x worker writes the pachctl config it gives user code.
const WORKER_PACH_CONFIG: &str = "/pachctl/config.json";

const USAGE: &str = "expected pfs://HOST:PORT/REPO@BRANCH?project=PROJECT&writer=NAME \
                     (port defaults to 30650, branch to master, project to default, writer to the spool's \
                     writer id or HOST-PID)";

/// A parsed `pfs://HOST:PORT/REPO@BRANCH?project=P`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `HOST:PORT` of pachd's gRPC API, spoken in plaintext as inside a worker.
    pub address: String,
    pub project: String,
    pub repo: String,
    pub branch: String,
    /// `writer=`: this sidecar's name among those writing the branch, naming its
    /// marker file (see `marker`); `None` for the spool's writer id, or `HOST-PID`.
    pub writer: Option<String>,
    pub token: TokenSource,
}

/// Where the `authn-token` sent to pachd comes from. Read again before each retry
/// that follows a failure, so a fixed token file takes effect without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Not configured: the pachctl config's token if its active context is for the
    /// same pachd (a personal session token goes to no other server), else none.
    Unset,
    /// `SPOUT_PACHD_TOKEN`.
    Literal(Secret),
    /// `--pachd-token-file`: its first line.
    File(PathBuf),
    /// The active context's `session_token` in a pachctl config file.
    PachConfig(PathBuf),
}

/// A token, kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl TokenSource {
    /// Chooses the source from `--pachd-token-file` and `SPOUT_PACHD_TOKEN`.
    pub fn from_options(file: Option<PathBuf>, token: Option<String>) -> Self {
        match (file, token) {
            (Some(path), _) => TokenSource::File(path),
            (None, Some(token)) if !token.trim().is_empty() => TokenSource::Literal(Secret(token.trim().to_owned())),
            _ => TokenSource::Unset,
        }
    }

    /// The token to send to the pachd at `address`, or `None` to send none.
    pub fn load(&self, address: &str) -> Result<Option<String>, TokenError> {
        match self {
            TokenSource::Unset => Ok(pachctl_context_for(address).and_then(|(_, context)| context.session_token)),
            TokenSource::Literal(Secret(token)) => Ok(Some(token.clone())),
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| TokenError::Unreadable { path: path.clone(), error })?;
                match text.lines().next().map(str::trim).filter(|t| !t.is_empty()) {
                    Some(token) => Ok(Some(token.to_owned())),
                    None => Err(TokenError::Empty { path: path.clone() }),
                }
            }
            TokenSource::PachConfig(path) => Ok(read_pach_config(path)?.session_token),
        }
    }

    /// Where the token for `address` comes from, for messages that say what to fix.
    pub fn describe(&self, address: &str) -> String {
        match self {
            TokenSource::Unset => match pachctl_context_for(address) {
                Some((path, _)) => format!("the session token of {}", path.display()),
                None => format!(
                    "no token (none given with --pachd-token-file or SPOUT_PACHD_TOKEN, and no \
                     pachctl config whose active context is for {address})"
                ),
            },
            TokenSource::Literal(_) => "SPOUT_PACHD_TOKEN".into(),
            TokenSource::File(path) => format!("the token file {}", path.display()),
            TokenSource::PachConfig(path) => format!("the session token of {}", path.display()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfs://{}/{}@{}", self.address, self.repo, self.branch)?;
        let project = (self.project != DEFAULT_PROJECT).then(|| format!("project={}", self.project));
        let writer = self.writer.as_ref().map(|name| format!("writer={name}"));
        let query: Vec<String> = project.into_iter().chain(writer).collect();
        if !query.is_empty() {
            write!(f, "?{}", query.join("&"))?;
        }
        Ok(())
    }
}

/// A `pfs://` sink URI that does not parse: which URI, what is wrong with it, and
/// what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("bad sink `{uri}`: {problem}; {usage}", usage = USAGE)]
pub struct BadPfsUri {
    pub uri: String,
    pub problem: UriProblem,
}

/// What is wrong with a `pfs://` URI.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UriProblem {
    #[error("it does not start with pfs://")]
    NotPfs,
    #[error("the host is missing")]
    NoHost,
    #[error("user info before the host is not supported; give the token with --pachd-token-file or SPOUT_PACHD_TOKEN")]
    UserInfo,
    #[error("`[` without `]` around an IPv6 host")]
    UnclosedBracket,
    #[error("`{0}` after the IPv6 host")]
    AfterIpv6Host(String),
    #[error("an IPv6 host goes in brackets, e.g. pfs://[::1]:1650/REPO")]
    UnbracketedIpv6,
    #[error("`{0}` is not a port number")]
    BadPort(String),
    #[error("the repo is missing")]
    NoRepo,
    /// `what` is `repo`, `branch` or `project`.
    #[error("the {what} name is empty")]
    EmptyName { what: &'static str },
    #[error("the {what} name `{name}` has {bad:?}: Pachyderm allows only letters, digits, `_` and `-`")]
    BadName { what: &'static str, name: String, bad: char },
    #[error("unknown parameter `{0}`, only `project=` and `writer=` are known")]
    UnknownParameter(String),
    #[error("the writer name `{0}` starts with `.`")]
    WriterStartsWithDot(String),
}

impl FromStr for Target {
    type Err = BadPfsUri;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let bad = |problem| BadPfsUri { uri: uri.to_owned(), problem };
        let rest = uri.strip_prefix("pfs://").ok_or_else(|| bad(UriProblem::NotPfs))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let address = parse_authority(authority).map_err(bad)?;
        if path.is_empty() {
            return Err(bad(UriProblem::NoRepo));
        }
        let (repo, branch) = match path.split_once('@') {
            Some((repo, branch)) => (repo, branch),
            None => (path, DEFAULT_BRANCH),
        };
        check_name("repo", repo).map_err(bad)?;
        check_name("branch", branch).map_err(bad)?;
        let mut project = DEFAULT_PROJECT;
        let mut writer = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("project", name)) => {
                    check_name("project", name).map_err(bad)?;
                    project = name;
                }
                Some(("writer", name)) => {
                    check_writer(name).map_err(bad)?;
                    writer = Some(name.to_owned());
                }
                _ => return Err(bad(UriProblem::UnknownParameter(pair.to_owned()))),
            }
        }
        Ok(Target {
            address,
            project: project.into(),
            repo: repo.into(),
            branch: branch.into(),
            writer,
            token: TokenSource::Unset,
        })
    }
}

/// `HOST:PORT`, `HOST` (default port) or `[V6]:PORT`.
fn parse_authority(authority: &str) -> Result<String, UriProblem> {
    if authority.is_empty() {
        return Err(UriProblem::NoHost);
    }
    if authority.contains('@') {
        return Err(UriProblem::UserInfo);
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']').ok_or(UriProblem::UnclosedBracket)?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or_else(|| UriProblem::AfterIpv6Host(after.to_owned()))?),
        };
        (&authority[..v6.len() + 2], port)
    } else if authority.matches(':').count() > 1 {
        return Err(UriProblem::UnbracketedIpv6);
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UriProblem::NoHost);
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => {
            port.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| UriProblem::BadPort(port.to_owned()))?
        }
    };
    Ok(format!("{host}:{port}"))
}

/// Pachyderm's rule for repo, branch and project names.
fn check_name(what: &'static str, name: &str) -> Result<(), UriProblem> {
    if name.is_empty() {
        return Err(UriProblem::EmptyName { what });
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        Some(bad) => Err(UriProblem::BadName { what, name: name.to_owned(), bad }),
        None => Ok(()),
    }
}

/// Why the token could not be read from where it was configured to come from.
///
/// The message names the cause too (it is the sink's one-line health message), so
/// the I/O or JSON error is a field rather than `source()`: a reporter walking the
/// chain would print it twice.
#[derive(Debug, Error)]
pub enum TokenError {
    #[error("cannot read the pachd token file {}: {error}", .path.display())]
    Unreadable { path: PathBuf, error: io::Error },
    #[error("the pachd token file {} is empty", .path.display())]
    Empty { path: PathBuf },
    #[error(transparent)]
    PachConfig(#[from] PachConfigError),
}

/// Why a pachctl config gave no context (see [`TokenError`] about the cause).
#[derive(Debug, Error)]
pub enum PachConfigError {
    #[error("cannot read the pachctl config {}: {error}", .path.display())]
    Unreadable { path: PathBuf, error: io::Error },
    #[error("the pachctl config {} is not valid JSON: {error}", .path.display())]
    NotJson { path: PathBuf, error: serde_json::Error },
    #[error("the pachctl config {} has no active context (v2.active_context `{active}`)", .path.display())]
    NoActiveContext { path: PathBuf, active: String },
}

/// A writer name is a file name in the repo: Pachyderm's name rule plus `.`, as in
/// host names, but not first.
fn check_writer(name: &str) -> Result<(), UriProblem> {
    if name.starts_with('.') {
        return Err(UriProblem::WriterStartsWithDot(name.to_owned()));
    }
    check_name("writer", &name.replace('.', "-")).map_err(|problem| match problem {
        UriProblem::BadName { what, bad, .. } => UriProblem::BadName { what, name: name.to_owned(), bad },
        other => other,
    })
}

#[derive(Debug, Default, Deserialize)]
struct PachConfig {
    #[serde(default)]
    v2: Option<PachConfigV2>,
}

#[derive(Debug, Default, Deserialize)]
struct PachConfigV2 {
    #[serde(default)]
    active_context: String,
    #[serde(default)]
    contexts: HashMap<String, PachContext>,
}

/// The fields of a pachctl context the sink uses.
#[derive(Debug, Default, Clone, Deserialize)]
struct PachContext {
    #[serde(default)]
    pachd_address: Option<String>,
    #[serde(default)]
    session_token: Option<String>,
}

fn read_pach_config(path: &Path) -> Result<PachContext, PachConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|error| PachConfigError::Unreadable { path: path.to_owned(), error })?;
    let config: PachConfig =
        serde_json::from_str(&text).map_err(|error| PachConfigError::NotJson { path: path.to_owned(), error })?;
    let v2 = config.v2.unwrap_or_default();
    let mut context = v2
        .contexts
        .get(&v2.active_context)
        .cloned()
        .ok_or_else(|| PachConfigError::NoActiveContext { path: path.to_owned(), active: v2.active_context.clone() })?;
    context.session_token = context.session_token.filter(|t| !t.is_empty());
    Ok(context)
}

/// The pachctl config's active context, if it is for the pachd at `address`. A
/// config that cannot be read is no config here: nobody asked for it.
fn pachctl_context_for(address: &str) -> Option<(PathBuf, PachContext)> {
    let path = pachctl_config_path()?;
    let context = read_pach_config(&path).ok()?;
    let configured = context.pachd_address.as_deref().and_then(normalize_address)?;
    (configured == address).then_some((path, context))
}

/// A pachctl `pachd_address` (`grpc://host:port`, `host:port`, `host`) as the
/// `HOST:PORT` the sink dials; `None` for one it cannot dial (e.g. TLS, `grpcs://`).
fn normalize_address(raw: &str) -> Option<String> {
    let bare = raw.trim().strip_prefix("grpc://").unwrap_or(raw.trim()).trim_end_matches('/');
    if bare.contains("://") {
        return None;
    }
    parse_authority(bare).ok()
}

/// `$PACH_CONFIG`, else the worker's config, else pachctl's default, if it exists.
fn pachctl_config_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".pachyderm/config.json"));
    std::env::var_os("PACH_CONFIG")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(WORKER_PACH_CONFIG)])
        .chain(home)
        .find(|p| p.is_file())
}

/// The `auto` sink inside a Pachyderm 2.x worker: a pachctl config (`$PACH_CONFIG`
/// or /pachctl/config.json) and `$PPS_PIPELINE_NAME` are both there. Commits go to
/// the pipeline's output repo through the pachd the config names.
pub fn detect_worker(env: impl Fn(&str) -> Option<String>) -> Option<Target> {
    let pipeline = env("PPS_PIPELINE_NAME").filter(|p| !p.is_empty())?;
    let config =
        env("PACH_CONFIG").filter(|p| !p.is_empty()).map(PathBuf::from).unwrap_or_else(|| WORKER_PACH_CONFIG.into());
    if !config.is_file() {
        return None;
    }
    let configured = match read_pach_config(&config) {
        Ok(context) => context.pachd_address,
        Err(e) => {
            tracing::warn!("{e}; trying pachd at {WORKER_PACHD}");
            None
        }
    };
    let address = match configured.as_deref().map(|raw| (raw, normalize_address(raw))) {
        Some((_, Some(address))) => address,
        Some((raw, None)) => {
            tracing::warn!("the pachctl config's pachd_address `{raw}` is not plaintext gRPC; trying {WORKER_PACHD}");
            WORKER_PACHD.into()
        }
        None => WORKER_PACHD.into(),
    };
    Some(Target {
        address,
        project: env("PPS_PROJECT_NAME").filter(|p| !p.is_empty()).unwrap_or_else(|| DEFAULT_PROJECT.into()),
        repo: pipeline,
        branch: DEFAULT_BRANCH.into(),
        writer: None,
        token: TokenSource::PachConfig(config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Result<Target, String> {
        uri.parse::<Target>().map_err(|e| e.to_string())
    }

    #[test]
    fn parses_full_and_short_uris() {
        let t = parse("pfs://pachd.ns.svc:1650/events@raw?project=ingest").unwrap();
        assert_eq!(
            (t.address.as_str(), t.repo.as_str(), t.branch.as_str(), t.project.as_str()),
            ("pachd.ns.svc:1650", "events", "raw", "ingest")
        );
        let t = parse("pfs://localhost/events").unwrap();
        assert_eq!(
            (t.address.as_str(), t.branch.as_str(), t.project.as_str()),
            ("localhost:30650", "master", "default")
        );
        assert_eq!(parse("pfs://[::1]:1653/r@b").unwrap().address, "[::1]:1653");
        assert_eq!(parse("pfs://[::1]/r").unwrap().address, "[::1]:30650");
        assert_eq!(t.to_string(), "pfs://localhost:30650/events@master");
        let t = parse("pfs://pachd/events?writer=spout-7f9c.x&project=p").unwrap();
        assert_eq!(t.writer.as_deref(), Some("spout-7f9c.x"));
        assert_eq!(t.to_string(), "pfs://pachd:30650/events@master?project=p&writer=spout-7f9c.x");
    }

    #[test]
    fn says_what_is_wrong() {
        let cases = [
            ("pfs://", "the host is missing"),
            ("pfs://host:1650", "the repo is missing"),
            ("pfs://host:1650/", "the repo is missing"),
            ("pfs://host:http/r", "`http` is not a port number"),
            ("pfs://::1:1650/r", "an IPv6 host goes in brackets"),
            ("pfs://host:1650/r@", "the branch name is empty"),
            ("pfs://host:1650/a/b", "the repo name `a/b` has '/'"),
            ("pfs://host:1650/r?project=", "the project name is empty"),
            ("pfs://host:1650/r?writer=", "the writer name is empty"),
            ("pfs://host:1650/r?writer=.a", "the writer name `.a` starts with `.`"),
            ("pfs://host:1650/r?writer=a/b", "the writer name `a/b` has '/'"),
            ("pfs://host:1650/r?repo=x", "unknown parameter `repo=x`"),
            ("pfs://u:p@host/r", "user info before the host"),
        ];
        for (uri, expected) in cases {
            let error = parse(uri).unwrap_err();
            assert!(error.contains(expected), "{uri}: {error}");
            assert!(error.contains("expected pfs://HOST:PORT/REPO@BRANCH"), "{error}");
        }
    }

    #[test]
    fn problems_can_be_matched() {
        let problem = |uri: &str| uri.parse::<Target>().unwrap_err().problem;
        assert_eq!(problem("pfs://host:http/r"), UriProblem::BadPort("http".into()));
        assert_eq!(problem("http://host/r"), UriProblem::NotPfs);
        assert!(matches!(problem("pfs://h/r?project=a.b"), UriProblem::BadName { what: "project", bad: '.', .. }));
        let error = "pfs://h:0/r".parse::<Target>().unwrap_err();
        assert_eq!(error.to_string(), format!("bad sink `pfs://h:0/r`: `0` is not a port number; {USAGE}"));
    }

    #[test]
    fn reads_the_token_file_and_tells_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let source = TokenSource::from_options(Some(path.clone()), Some("ignored".into()));
        assert_eq!(source.load("pachd:1650").unwrap(), Some("s3cret".into()));
        std::fs::write(&path, "\n").unwrap();
        let empty = source.load("pachd:1650").unwrap_err();
        assert_eq!(empty.to_string(), format!("the pachd token file {} is empty", path.display()));
        assert!(matches!(empty, TokenError::Empty { .. }));
        let missing = TokenSource::File(dir.path().join("nope"));
        let error = missing.load("pachd:1650").unwrap_err();
        assert!(error.to_string().starts_with("cannot read the pachd token file"), "{error}");
        assert!(matches!(error, TokenError::Unreadable { error, .. } if error.kind() == io::ErrorKind::NotFound));
        assert_eq!(format!("{:?}", TokenSource::from_options(None, Some("t".into()))), "Literal(Secret(..))");
    }

    #[test]
    fn reads_pachctl_addresses() {
        assert_eq!(normalize_address("grpc://localhost:1653/").as_deref(), Some("localhost:1653"));
        assert_eq!(normalize_address("pachd.example").as_deref(), Some("pachd.example:30650"));
        assert_eq!(normalize_address("grpcs://pachd.example:443"), None);
    }

    #[test]
    fn detects_a_worker_from_its_pachctl_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"v2": {"active_context": "w", "contexts": {
                "other": {"pachd_address": "grpc://elsewhere:1"},
                "w": {"pachd_address": "grpc://localhost:1653", "session_token": "tok"}}}}"#,
        )
        .unwrap();
        let config_str = config.to_str().unwrap().to_owned();
        let env = |name: &str| match name {
            "PACH_CONFIG" => Some(config_str.clone()),
            "PPS_PIPELINE_NAME" => Some("spout".into()),
            "PPS_PROJECT_NAME" => Some("proj".into()),
            _ => None,
        };
        let target = detect_worker(env).unwrap();
        assert_eq!(target.to_string(), "pfs://localhost:1653/spout@master?project=proj");
        assert_eq!(target.token.load(&target.address).unwrap(), Some("tok".into()));
        let no_pipeline = |name: &str| if name == "PACH_CONFIG" { Some(config_str.clone()) } else { None };
        assert_eq!(detect_worker(no_pipeline), None);
    }
}
