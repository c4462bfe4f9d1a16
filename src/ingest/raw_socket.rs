//! The raw Unix socket. (Stub: being written.)

/// How the raw socket's stream is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RawFraming {
    /// Newline-delimited messages.
    Lines,
    /// 4-byte big-endian length, then that many bytes.
    Frames,
}
