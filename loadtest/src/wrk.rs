//! `wrk` as the client, for the ceilings and the single-request scenarios: a client
//! apart from the harness's own, so that a server's ceiling is not that of the code
//! measuring it (the suite measures the two clients side by side).
//!
//! Each request still carries a message the read-back can check (`msg`'s format: id
//! and checksum). wrk's LuaJIT builds them in `request()`: thread `t` of `T` sends ids
//! `t, t+T, t+2T, …`, and the checksum is not computed per request but assembled
//! from the table written here ([`IdCrc`]): sixteen XORs per request.
//!
//! Which requests wrk had answered when it stopped is not something it can tell, so
//! it does not stop mid-flight: after the load's duration every connection's `delay()`
//! parks it, the answers still on the way arrive within the grace period, and only
//! then does wrk end. A clean run (every request answered 2xx, no socket error) has
//! every id it sent accepted; any other leaves them unknown, and fails the run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::body::Framing;
use crate::client::Endpoint;
use crate::load::{Load, Measured, Target};
use crate::msg::{Generator, IdCrc, HEADER_LEN, ID_AT, SIGNED_LEN};
use crate::report::Latency;
use crate::verify::Outcome;

/// How long after the load wrk keeps running so the last answers arrive.
const GRACE: Duration = Duration::from_secs(3);

/// What `done()` prints, after its marker.
const MARKER: &str = "LOADTEST-WRK ";

#[derive(serde::Deserialize)]
struct Summary {
    /// Requests built by each thread, in thread order.
    made: Vec<u64>,
    answered: u64,
    status_errors: u64,
    socket_errors: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

/// Runs `load` with wrk (`threads` of them), its script written into `work_dir`.
/// Blocking: call it from a blocking task.
pub fn drive(load: &Load, threads: usize, work_dir: &Path) -> anyhow::Result<(Measured, Latency)> {
    let Target::Http(Endpoint::Tcp(addr)) = &load.target else {
        bail!("wrk speaks HTTP over TCP only: use --transport http or --client harness");
    };
    if load.framing != Framing::Raw || load.batch != 1 || load.sizes.min != load.sizes.max || load.rate.is_some() {
        bail!("wrk sends single messages of one size in a closed loop: --framing raw --batch 1, a fixed --size, no --rate");
    }
    let size = load.sizes.min;
    let threads = threads.clamp(1, load.connections.max(1));
    let script = work_dir.join("loadtest.lua");
    std::fs::write(&script, lua_script(load, size, threads)).context("writing the wrk script")?;
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{}", load.connections))
        // Whole seconds is all wrk takes; the script ends the load on time.
        .arg(format!("-d{}s", (load.duration + GRACE).as_secs_f64().ceil()))
        .args(["--timeout", "10s", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .output()
        .context("running wrk (Debian package `wrk`; `cargo xtask test` installs it)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed ({}): {}{}", output.status, stdout, String::from_utf8_lossy(&output.stderr));
    }
    let summary: Summary = stdout
        .lines()
        .find_map(|line| line.strip_prefix(MARKER))
        .with_context(|| format!("wrk printed no summary:\n{stdout}"))
        .and_then(|json| serde_json::from_str(json).context("reading wrk's summary"))?;
    Ok((measured(&summary, size as u64, load.duration), latency(&summary)))
}

fn measured(summary: &Summary, size: u64, duration: Duration) -> Measured {
    let threads = summary.made.len() as u64;
    // wrk calls the first thread's `request()` once before the load, to check what it
    // returns, and never sends that request: id 0.
    let made = summary.made.iter().sum::<u64>().saturating_sub(1);
    let unanswered = made.saturating_sub(summary.answered);
    let mut m = Measured::empty();
    m.elapsed = duration;
    let clean = summary.status_errors == 0 && summary.socket_errors == 0 && unanswered == 0;
    let outcome = if clean { Outcome::Accepted } else { Outcome::Unknown };
    // Thread t sent ids t, t+T, …: every thread's first `common` form one range.
    let common = summary.made.iter().copied().min().unwrap_or(0);
    m.sent.record(0, 1, Outcome::Unknown);
    m.sent.record(1, (common * threads).saturating_sub(1), outcome);
    for (t, &n) in summary.made.iter().enumerate() {
        for id in (common..n).map(|k| k * threads + t as u64).filter(|&id| id != 0) {
            m.sent.record(id, 1, outcome);
        }
    }
    if clean {
        (m.accepted_requests, m.messages, m.bytes) = (made, made, made * size);
    } else {
        m.refused_requests = summary.status_errors;
        m.failed_requests = summary.socket_errors + unanswered;
        m.error(format!(
            "wrk: {} answers not 2xx, {} socket errors, {unanswered} requests unanswered; which messages \
             those carried wrk cannot tell, so none of the run's is counted accepted",
            summary.status_errors, summary.socket_errors
        ));
    }
    m
}

fn latency(summary: &Summary) -> Latency {
    let ms = |us: f64| us / 1000.0;
    Latency {
        p50_ms: ms(summary.p50_us),
        p99_ms: ms(summary.p99_us),
        p999_ms: ms(summary.p999_us),
        max_ms: ms(summary.max_us),
    }
}

/// The Lua script: messages of `size` bytes, ids interleaved over `threads`.
fn lua_script(load: &Load, size: usize, threads: usize) -> String {
    let message = Generator::new(load.run, size).message(0, size).to_vec();
    let (head, filler) = message.split_at(HEADER_LEN);
    let signed_base: Vec<u8> = [&head[..SIGNED_LEN], filler].concat();
    let (base_crc, id_crc) = (crc32fast::hash(&signed_base), IdCrc::new(signed_base.len()));
    let path = if load.wait_commit { "/messages?wait=commit" } else { "/messages" };
    let prefix = format!(
        "POST {path} HTTP/1.1\\r\\nHost: loadtest\\r\\nContent-Type: {}\\r\\nContent-Length: {size}\\r\\n\\r\\n{}",
        load.framing.content_type(),
        std::str::from_utf8(&head[..ID_AT]).expect("the header is ASCII"),
    );
    let mut crcs = String::new();
    for (i, crc) in id_crc.table().iter().enumerate() {
        let _ = write!(crcs, "{}0x{crc:08x},", if i % 8 == 0 { "\n  " } else { "" });
    }
    format!(
        r#"-- Written by loadtest (loadtest/src/wrk.rs), for one run: see there.
local bit = require("bit")
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} loadtest_timespec;
int clock_gettime(int clock, loadtest_timespec *now);
]]
local clock = ffi.new("loadtest_timespec")
local function now()
  ffi.C.clock_gettime(1, clock)
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local bxor, band, rshift, tohex = bit.bxor, bit.band, bit.rshift, bit.tohex
local PREFIX = "{prefix}"
local LEN = "{len:08x}"
local FILLER = [==[{filler}]==]
local THREADS = {threads}
local DURATION = {duration}
local BASE_CRC = 0x{base_crc:08x}
local CRC = {{{crcs}
}}

local threads = {{}}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local deadline
function init(args)
  made = 0
  deadline = now() + DURATION
end

function delay()
  if now() < deadline then return 0 end
  return 3600000
end

local function digits(crc, word, first)
  for k = 0, 7 do
    crc = bxor(crc, CRC[(first + 7 - k) * 16 + band(rshift(word, 4 * k), 15) + 1])
  end
  return crc
end

function request()
  local id = made * THREADS + tid
  made = made + 1
  local hi = math.floor(id / 4294967296)
  local lo = id - hi * 4294967296
  local crc = digits(digits(BASE_CRC, hi, 0), lo, 8)
  return PREFIX .. tohex(hi, 8) .. tohex(lo, 8) .. LEN .. tohex(crc, 8) .. ":" .. FILLER
end

function done(summary, latency, requests)
  local made = {{}}
  for i, thread in ipairs(threads) do made[i] = thread:get("made") end
  local e = summary.errors
  io.write(string.format(
    '{MARKER}{{"made":[%s],"answered":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%f,"p99_us":%f,"p999_us":%f,"max_us":%f}}\n',
    table.concat(made, ","), summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"#,
        len = size,
        filler = std::str::from_utf8(filler).expect("the filler is ASCII"),
        duration = load.duration.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use crate::verify::tests::tallying_server;
    use crate::verify::{verdict, Separator};

    /// A short wrk run (two threads, so interleaved ids) against a server that
    /// checks every body as the read-back does: each answered message arrives once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_message_wrk_sends_is_well_formed_and_accounted_for() {
        let run = 0xabcd;
        let (addr, tally) = tallying_server(run, Separator::None).await;
        let mut scenario = Scenario::named("wrk");
        (scenario.duration, scenario.connections) = (Duration::from_millis(500), 4);
        let load = scenario.load(Target::Http(Endpoint::Tcp(addr)), run, false);
        let dir = tempfile::tempdir().unwrap();
        let (measured, latency) =
            tokio::task::spawn_blocking(move || drive(&load, 2, dir.path())).await.unwrap().unwrap();
        let v = verdict(&measured.sent, &tally.lock().unwrap());
        assert!(v.ok && v.found == v.accepted && v.unknown == 1, "{v:#?}\n{:?}", measured.errors);
        assert_eq!(measured.accepted_requests, v.accepted);
        assert!(latency.p50_ms > 0.0 && latency.p99_ms >= latency.p50_ms);
    }
}
