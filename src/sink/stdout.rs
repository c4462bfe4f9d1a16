//! The `stdout:` sink. (Stub: being written.)

use super::{Commit, Sink, SinkContext};

#[derive(Default)]
pub struct StdoutSink;

impl StdoutSink {
    pub fn new() -> Self {
        Self
    }
}

impl Sink for StdoutSink {
    fn describe(&self) -> String {
        "stdout:".into()
    }

    fn submit(&mut self, commit: Commit, _ctx: &SinkContext) {
        commit.ack.failed("stdout sink not written yet");
    }
}
