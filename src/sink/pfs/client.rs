//! A connection to pachd: the gRPC channel, the `authn-token` on every call, and
//! one method per PFS call the sink makes, each with its deadline.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::proto::pfs_v2::api_client::ApiClient;
use super::proto::pfs_v2::{
    Branch, ClearCommitRequest, Commit, CommitInfo, CommitState, CreateRepoRequest, FinishCommitRequest,
    InspectBranchRequest, InspectCommitRequest, InspectRepoRequest, ModifyFileRequest, Project, Repo,
    StartCommitRequest,
};
use super::target::{Target, TokenError, TokenSource};

/// How long a call that moves no file data may take.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// FinishCommit may wait for pachd's storage; cutting it short only costs an
/// InspectCommit, but a generous deadline spares retries on a slow pachd.
const FINISH_DEADLINE: Duration = Duration::from_secs(120);
/// A ModifyFile stream gets this long plus a second per MiB it carries.
const STREAM_BASE_DEADLINE: Duration = Duration::from_secs(60);
/// gRPC's default 64 KiB windows cap a stream at a window per round trip; larger
/// ones let multi-MiB files flow at the link's speed.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// A pachd address that cannot become a gRPC endpoint.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{address}` is not a usable pachd address: {reason}")]
pub struct BadAddress {
    address: String,
    reason: String,
}

/// Why no token could be sent.
#[derive(Debug, thiserror::Error)]
pub enum BadToken {
    /// Its source could not be read.
    #[error(transparent)]
    Unloadable(#[from] TokenError),
    #[error("{0} is not a valid token (non-ASCII characters)")]
    NotAscii(String),
}

/// The `authn-token` header pachd checks, shared with the channel's interceptor so
/// a reloaded token applies to the next call.
#[derive(Clone, Default)]
struct AuthToken(Arc<RwLock<Option<AsciiMetadataValue>>>);

impl Interceptor for AuthToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = self.0.read().unwrap().as_ref() {
            request.metadata_mut().insert("authn-token", token.clone());
        }
        Ok(request)
    }
}

pub struct Pachd {
    api: ApiClient<InterceptedService<Channel, AuthToken>>,
    token: AuthToken,
    token_source: TokenSource,
    address: String,
    repo: Repo,
    branch: Branch,
}

impl Pachd {
    /// Prepares a channel that connects on first use and reconnects after pachd
    /// restarts; the token is loaded by [`Pachd::reload_token`]. Must run inside a
    /// tokio runtime.
    pub fn new(target: &Target) -> Result<Self, BadAddress> {
        let endpoint = Endpoint::from_shared(format!("http://{}", target.address))
            .map_err(|e| BadAddress { address: target.address.clone(), reason: e.to_string() })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        let token = AuthToken::default();
        let api = ApiClient::with_interceptor(endpoint.connect_lazy(), token.clone());
        let repo = Repo {
            name: target.repo.clone(),
            r#type: "user".into(),
            project: Some(Project { name: target.project.clone() }),
        };
        let branch = Branch { repo: Some(repo.clone()), name: target.branch.clone() };
        Ok(Self { api, token, token_source: target.token.clone(), address: target.address.clone(), repo, branch })
    }

    /// Reads the token from its source again (a fixed token file takes effect).
    pub fn reload_token(&mut self) -> Result<(), BadToken> {
        let token = match self.token_source.load(&self.address)? {
            Some(token) => {
                Some(token.parse::<AsciiMetadataValue>().map_err(|_| BadToken::NotAscii(self.token_origin()))?)
            }
            None => None,
        };
        *self.token.0.write().unwrap() = token;
        Ok(())
    }

    /// Where the token comes from, for messages that say what to fix.
    pub fn token_origin(&self) -> String {
        self.token_source.describe(&self.address)
    }

    /// Makes sure the repo exists: inspects it, and creates it (type "user") if
    /// pachd does not know it. Inspecting first matters with auth on, where a
    /// pipeline's token may read its output repo but not create repos.
    pub async fn ensure_repo(&mut self) -> Result<(), Status> {
        let repo = Some(self.repo.clone());
        match self.api.inspect_repo(deadline(InspectRepoRequest { repo: repo.clone() })).await {
            Ok(_) => return Ok(()),
            Err(status) if !is_not_found(&status) => return Err(status),
            Err(_) => {}
        }
        let create = CreateRepoRequest { repo, description: "spout-sidecar output".into(), update: false };
        match self.api.create_repo(deadline(create)).await {
            Err(status) if !is_already_exists(&status) => Err(status),
            _ => Ok(()),
        }
    }

    pub async fn start_commit(&mut self, description: &str) -> Result<Commit, Status> {
        let request =
            StartCommitRequest { parent: None, description: description.into(), branch: Some(self.branch.clone()) };
        let mut commit = self.api.start_commit(deadline(request)).await?.into_inner();
        if commit.branch.is_none() {
            commit.branch = Some(self.branch.clone());
        }
        Ok(commit)
    }

    /// The commit at the head of the branch, if the branch has one.
    pub async fn branch_head(&mut self) -> Result<Option<Commit>, Status> {
        let request = InspectBranchRequest { branch: Some(self.branch.clone()) };
        match self.api.inspect_branch(deadline(request)).await {
            Ok(info) => Ok(info.into_inner().head),
            Err(status) if is_not_found(&status) => Ok(None),
            Err(status) => Err(status),
        }
    }

    pub async fn inspect_commit(&mut self, commit: &Commit) -> Result<CommitInfo, Status> {
        let request = InspectCommitRequest {
            commit: Some(commit.clone()),
            // STARTED answers at once for any existing commit.
            wait: CommitState::Started as i32,
        };
        Ok(self.api.inspect_commit(deadline(request)).await?.into_inner())
    }

    pub async fn clear_commit(&mut self, commit: &Commit) -> Result<(), Status> {
        let request = ClearCommitRequest { commit: Some(commit.clone()) };
        self.api.clear_commit(deadline(request)).await.map(drop)
    }

    /// Finishes the commit; a non-empty `error` marks it failed.
    pub async fn finish_commit(&mut self, commit: &Commit, error: &str) -> Result<(), Status> {
        let request = FinishCommitRequest {
            commit: Some(commit.clone()),
            description: String::new(),
            error: error.into(),
            force: false,
        };
        let mut request = Request::new(request);
        request.set_timeout(FINISH_DEADLINE);
        self.api.finish_commit(request).await.map(drop)
    }

    /// Sends one ModifyFile stream; `bytes` sizes its deadline.
    pub async fn modify_file(
        &mut self,
        requests: impl Iterator<Item = ModifyFileRequest> + Send + 'static,
        bytes: u64,
    ) -> Result<(), Status> {
        let mut request = Request::new(futures_util::stream::iter(requests));
        request.set_timeout(STREAM_BASE_DEADLINE + Duration::from_secs(bytes >> 20));
        self.api.modify_file(request).await.map(drop)
    }
}

fn deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    request
}

/// Older pachd answers "not found" with code Unknown, so the message counts too.
fn is_not_found(status: &Status) -> bool {
    status.code() == Code::NotFound || status.message().contains("not found")
}

fn is_already_exists(status: &Status) -> bool {
    status.code() == Code::AlreadyExists || status.message().contains("already exists")
}
