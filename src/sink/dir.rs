//! The `dir:` sink. (Stub: being written.)

use std::path::PathBuf;

use super::{Commit, Sink, SinkContext};

pub struct DirSink {
    root: PathBuf,
}

impl DirSink {
    pub fn open(root: PathBuf) -> std::io::Result<Self> {
        Ok(Self { root })
    }
}

impl Sink for DirSink {
    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn submit(&mut self, commit: Commit, _ctx: &SinkContext) {
        commit.ack.failed("dir sink not written yet");
    }
}
