//! A connection to pachd: the gRPC channel, the `authn-token` on every call, and
//! one method per PFS call the sink makes, each with its deadline.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};

use super::proto::google::protobuf::BytesValue;
use super::proto::pfs_v2::api_client::ApiClient;
use super::proto::pfs_v2::{
    Branch, Commit, CommitInfo, CommitSet, CommitState, CreateRepoRequest, File, FileInfo, GetFileRequest,
    InspectCommitRequest, InspectCommitSetRequest, InspectRepoRequest, ModifyFileRequest, Project, Repo,
    WalkFileRequest,
};
use super::target::{Target, TokenError, TokenSource};

/// How long a call that moves no file data may take.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// How long a wait for a commit to be finished (compacted and validated) may take,
/// the wait being InspectCommit or a GetFile on a finishing commit.
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

/// Cloning shares the channel and the token: a clone's calls go over the same
/// connection.
#[derive(Clone)]
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

    /// The branch itself as ModifyFile's target: pachd makes a commit of the whole
    /// stream on the head of the moment (or joins the head if it is open).
    pub fn branch_target(&self) -> Commit {
        Commit { repo: Some(self.repo.clone()), id: String::new(), branch: Some(self.branch.clone()) }
    }

    /// The commit at the head of the branch, if the branch has one.
    pub async fn inspect_head(&mut self) -> Result<Option<CommitInfo>, Status> {
        match self.inspect_commit(&self.branch_target()).await {
            Ok(info) => Ok(Some(info)),
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

    /// Waits until pachd has finished the commit (its master validated it), or the
    /// call's deadline passes first.
    pub async fn wait_finished(&mut self, commit: &Commit) -> Result<CommitInfo, Status> {
        let request = InspectCommitRequest { commit: Some(commit.clone()), wait: CommitState::Finished as i32 };
        let mut request = Request::new(request);
        request.set_timeout(FINISH_DEADLINE);
        Ok(self.api.inspect_commit(request).await?.into_inner())
    }

    /// A small file's bytes at `commit` (at most `limit` of them), or `None` if the
    /// file or the commit is not there. pachd answers once the commit is finished if
    /// it is finishing.
    pub async fn get_small_file(&mut self, commit: &Commit, path: &str, limit: usize) -> Result<Option<Bytes>, Status> {
        let file = File { commit: Some(commit.clone()), path: path.into(), datum: String::new() };
        let mut request = Request::new(GetFileRequest { file: Some(file) });
        request.set_timeout(FINISH_DEADLINE);
        let mut stream = match self.api.get_file(request).await {
            Ok(answer) => answer.into_inner(),
            Err(status) if is_not_found(&status) => return Ok(None),
            Err(status) => return Err(status),
        };
        let mut content = BytesMut::new();
        loop {
            match stream.message().await {
                Ok(Some(piece)) => {
                    content.extend_from_slice(&piece.value[..piece.value.len().min(limit - content.len())])
                }
                Ok(None) => return Ok(Some(content.freeze())),
                Err(status) if is_not_found(&status) => return Ok(None),
                Err(status) => return Err(status),
            }
        }
    }

    /// The commit `id` of `repo` (this sink's repo if `None`), in this sink's project.
    pub fn commit_in(&self, repo: Option<&str>, id: &str) -> Commit {
        let repo = match repo {
            Some(name) => Repo { name: name.into(), ..self.repo.clone() },
            None => self.repo.clone(),
        };
        let branch = Branch { repo: Some(repo.clone()), name: String::new() };
        Commit { repo: Some(repo), id: id.into(), branch: Some(branch) }
    }

    /// A file's bytes as pachd streams them. Unbounded in time: the stream moves at
    /// the pace its reader takes it.
    pub async fn get_file(&mut self, commit: &Commit, path: &str) -> Result<Streaming<BytesValue>, Status> {
        let file = File { commit: Some(commit.clone()), path: path.into(), datum: String::new() };
        Ok(self.api.get_file(Request::new(GetFileRequest { file: Some(file) })).await?.into_inner())
    }

    /// Every file and directory of a commit, as pachd walks them from the root.
    pub async fn walk_files(&mut self, commit: &Commit, under: &str) -> Result<Streaming<FileInfo>, Status> {
        let file = File { commit: Some(commit.clone()), path: under.into(), datum: String::new() };
        let request = Request::new(WalkFileRequest { file: Some(file) });
        Ok(self.api.walk_file(request).await?.into_inner())
    }

    /// The commits of commit set `id`: at once with `wait` false; with `wait`, each
    /// once it is finished, those finished already first.
    pub async fn commit_set(&mut self, id: &str, wait: bool) -> Result<Streaming<CommitInfo>, Status> {
        let request = InspectCommitSetRequest { commit_set: Some(CommitSet { id: id.into() }), wait };
        let mut request = Request::new(request);
        if !wait {
            request.set_timeout(CALL_DEADLINE);
        }
        Ok(self.api.inspect_commit_set(request).await?.into_inner())
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
pub fn is_not_found(status: &Status) -> bool {
    status.code() == Code::NotFound || status.message().contains("not found")
}

fn is_already_exists(status: &Status) -> bool {
    status.code() == Code::AlreadyExists || status.message().contains("already exists")
}
