//! A Pachyderm 1.x spout reading Kafka: `fifo:` writes each batch's checkpoint into
//! the archive under `.spout/`, which the pipeline's `"marker": ".spout"` sends to the
//! marker branch, and at the next start the sidecar reads it back from where the
//! worker puts the marker, `/pfs/.spout` beside the pipe.

use std::time::Duration;

use super::broker::Broker;
use crate::support::pachyderm_reader::{fifo_in, Mode, PachydermReader};
use crate::support::sidecar::{eventually, Sidecar};

#[test]
fn fifo_resumes_at_the_offsets_of_the_marker_pachyderm_gives_back() {
    let broker = Broker::start();
    broker.create_topic("marked", 1);
    broker.produce("marked", 0, (0..10).map(|i| format!("m-{i}").into_bytes()).collect());
    let pfs = tempfile::tempdir().unwrap();
    let fifo = fifo_in(pfs.path());
    // What the worker downloaded from the marker branch: the last archive had read 6.
    let marker = pfs.path().join(".spout/checkpoints");
    std::fs::create_dir_all(&marker).unwrap();
    let uri = broker.uri("marked", "");
    let previous = serde_json::json!({"source": uri, "offsets": {"0": 6}});
    std::fs::write(marker.join("kafka.marked.r1.json"), previous.to_string()).unwrap();

    let reader = PachydermReader::start(&fifo, Mode::KeepOpen);
    let sink = format!("fifo:{}", fifo.display());
    let sidecar = Sidecar::start(&["--source", &uri, "--sink", &sink, "--source-replica", "r1"]);
    eventually(Duration::from_secs(20), "the records after the marker's offset", || {
        (sidecar.metric(r#"spout_source_messages_total{source="kafka.marked"}"#) == 4).then_some(())
    });
    sidecar.flush();
    assert!(sidecar.stop().success());
    let files: Vec<(String, Vec<u8>)> = reader.stop().into_iter().flatten().collect();
    let (checkpoints, messages): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|(name, _)| name.starts_with(".spout/"));
    let messages: Vec<Vec<u8>> = messages.into_iter().map(|(_, body)| body).collect();
    assert_eq!(messages, ["m-6", "m-7", "m-8", "m-9"].map(|m| m.as_bytes().to_vec()));
    let (name, body) = checkpoints.last().expect("the archive carries the checkpoint");
    assert_eq!(name, ".spout/checkpoints/kafka.marked.r1.json");
    let checkpoint: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(checkpoint["offsets"], serde_json::json!({"0": 10}));
}
