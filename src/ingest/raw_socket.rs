//! The raw Unix socket. (Stub: being written.)

/// How the raw socket's stream is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RawFraming {
    /// Newline-delimited messages.
    Lines,
    /// 4-byte big-endian length, then that many bytes.
    Frames,
}

/// Serves the raw socket until `shutdown`. (Stub: being written.)
pub async fn serve(
    listener: tokio::net::UnixListener,
    framing: RawFraming,
    intake: std::sync::Arc<super::Intake>,
    max_message_bytes: u64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let _ = (listener, framing, intake, max_message_bytes);
    let _ = shutdown.wait_for(|&stop| stop).await;
}
