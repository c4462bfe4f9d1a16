//! The `fifo:` sink. (Stub: being written.)

use std::path::PathBuf;

use super::{Commit, Sink, SinkContext};

pub struct FifoSink {
    path: PathBuf,
}

impl FifoSink {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl Sink for FifoSink {
    fn describe(&self) -> String {
        format!("fifo:{}", self.path.display())
    }

    fn submit(&mut self, commit: Commit, _ctx: &SinkContext) {
        commit.ack.failed("fifo sink not written yet");
    }
}
