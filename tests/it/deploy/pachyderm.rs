//! Pachyderm pipeline specs (deploy/pachyderm/*.json): the fields `pachctl create
//! pipeline` reads, per spout generation, and the sidecar invocations inside them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use super::files::{self, shown};
use super::sidecar;
use crate::support::python;

/// Spouts 1.0 (Pachyderm 1.9 to 1.11) write tar streams into /pfs/out; spouts 2.0
/// (Pachyderm 2.x) commit through the PFS API. Their specs differ in `spout`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Generation {
    V1,
    V2,
}

/// Top-level fields of CreatePipelineRequest that a spout may set, per generation
/// (pps.proto of 1.11 and of 2.x); `input` and a top-level `service` are not among
/// them: a spout takes no input and is not a service.
const SPEC_FIELDS: &[&str] = &[
    "pipeline",
    "description",
    "metadata",
    "transform",
    "spout",
    "resource_requests",
    "resource_limits",
    "sidecar_resource_limits",
    "scheduling_spec",
    "pod_spec",
    "pod_patch",
    "output_branch",
    "salt",
    "datum_timeout",
    "job_timeout",
];
const TRANSFORM_FIELDS: &[&str] = &[
    "image",
    "cmd",
    "env",
    "secrets",
    "image_pull_secrets",
    "stdin",
    "err_cmd",
    "err_stdin",
    "accept_return_code",
    "debug",
    "user",
    "working_dir",
    "dockerfile",
];

fn spout_fields(generation: Generation) -> &'static [&'static str] {
    match generation {
        Generation::V1 => &["overwrite", "service", "marker"],
        Generation::V2 => &["service"],
    }
}

fn service_fields(generation: Generation) -> &'static [&'static str] {
    match generation {
        Generation::V1 => &["internal_port", "external_port"],
        Generation::V2 => &["internal_port", "external_port", "ip", "type"],
    }
}

struct Spec {
    path: PathBuf,
    generation: Generation,
    body: Value,
}

fn specs() -> Vec<Spec> {
    let specs: Vec<Spec> = files::with_extension(&["json"])
        .into_iter()
        .filter(|path| path.parent().is_some_and(|dir| dir.ends_with("pachyderm")))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let generation = if name.starts_with("spout-v1") {
                Generation::V1
            } else if name.starts_with("spout-v2") {
                Generation::V2
            } else {
                panic!("{}: name it spout-v1* or spout-v2* after the spout generation it targets", shown(&path))
            };
            Spec { body: files::json(&path), path, generation }
        })
        .collect();
    for generation in [Generation::V1, Generation::V2] {
        assert!(specs.iter().any(|s| s.generation == generation), "no {generation:?} spout spec");
    }
    specs
}

fn assert_only_fields(object: &Value, allowed: &[&str], context: &str) {
    let object = object.as_object().unwrap_or_else(|| panic!("{context}: not an object"));
    for key in object.keys() {
        assert!(allowed.contains(&key.as_str()), "{context}: `{key}` is not a field here (allowed: {allowed:?})");
    }
}

fn str_field<'a>(object: &'a Value, pointer: &str, context: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("{context}: {pointer} must be a non-empty string"))
}

fn strings(value: &Value, context: &str) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{context}: not an array"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("{context}: {v} is not a string")).to_owned())
        .collect()
}

/// Pachyderm's rule for pipeline (and so output repo) names.
fn valid_pipeline_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    (1..=63).contains(&name.len())
        && name.chars().all(|c| alnum(c) || c == '_' || c == '-')
        && name.starts_with(alnum)
        && name.ends_with(alnum)
}

fn transform_env(spec: &Spec) -> BTreeMap<String, String> {
    let context = shown(&spec.path);
    match spec.body.pointer("/transform/env") {
        None => BTreeMap::new(),
        Some(env) => env
            .as_object()
            .unwrap_or_else(|| panic!("{context}: transform.env must map names to strings"))
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().unwrap_or_else(|| panic!("{context}: transform.env.{k} must be a string"));
                (k.clone(), v.to_owned())
            })
            .collect(),
    }
}

/// Where transform.secrets puts secret files in the user container.
fn secret_mounts(spec: &Spec) -> Vec<PathBuf> {
    let context = shown(&spec.path);
    let Some(secrets) = spec.body.pointer("/transform/secrets") else {
        return Vec::new();
    };
    secrets
        .as_array()
        .unwrap_or_else(|| panic!("{context}: transform.secrets must be an array"))
        .iter()
        .filter_map(|secret| {
            str_field(secret, "/name", &context);
            let by_env = secret.get("env_var").is_some() && secret.get("key").is_some();
            let mount = secret.get("mount_path").and_then(Value::as_str);
            assert!(by_env || mount.is_some(), "{context}: a secret needs mount_path, or env_var and key");
            mount.map(PathBuf::from)
        })
        .collect()
}

fn service_port(spec: &Spec, field: &str) -> u16 {
    let context = shown(&spec.path);
    spec.body
        .pointer(&format!("/spout/service/{field}"))
        .and_then(Value::as_u64)
        .and_then(|port| u16::try_from(port).ok())
        .unwrap_or_else(|| panic!("{context}: spout.service.{field} must be a port number"))
}

#[test]
fn pipeline_specs_have_what_pachctl_needs() {
    let mut node_ports = BTreeSet::new();
    for spec in specs() {
        let context = shown(&spec.path);
        let body = &spec.body;
        assert_only_fields(body, SPEC_FIELDS, &context);
        let name = str_field(body, "/pipeline/name", &context);
        assert!(valid_pipeline_name(name), "{context}: `{name}` is not a valid pipeline name");
        assert_only_fields(&body["transform"], TRANSFORM_FIELDS, &format!("{context}: transform"));
        let image = str_field(body, "/transform/image", &context);
        assert!(
            image.rsplit_once(':').is_some_and(|(_, tag)| !tag.contains('/') && tag != "latest"),
            "{context}: pin the image to a version tag, not `{image}`"
        );
        assert!(!strings(&body["transform"]["cmd"], &context).is_empty(), "{context}: transform.cmd is empty");
        transform_env(&spec);
        secret_mounts(&spec);
        assert_only_fields(&body["spout"], spout_fields(spec.generation), &format!("{context}: spout"));
        assert_only_fields(
            &body["spout"]["service"],
            service_fields(spec.generation),
            &format!("{context}: spout.service"),
        );
        let internal = service_port(&spec, "internal_port");
        let external = service_port(&spec, "external_port");
        assert!(internal > 0, "{context}: internal_port 0");
        assert!(
            (30000..=32767).contains(&external),
            "{context}: external_port {external} is outside the NodePort range"
        );
        assert!(node_ports.insert(external), "{context}: external_port {external} is taken by another spec");
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{context}: not scraped");
        assert_eq!(annotations["prometheus.io/port"], internal.to_string(), "{context}: scrape port");
        assert!(sidecar::ENDPOINTS.contains(&str_field(annotations, "/prometheus.io~1path", &context)));
    }
}

/// The supervisor form: `spout-sidecar [OPTIONS] -- python3 producer.py` as transform.cmd.
#[test]
fn supervised_sidecars_parse_and_match_their_spec() {
    let supervised: Vec<Spec> =
        specs().into_iter().filter(|s| s.body["transform"]["cmd"][0] == "spout-sidecar").collect();
    assert!(supervised.iter().any(|s| s.generation == Generation::V1), "a 1.x spec in the supervisor form");
    assert!(supervised.iter().any(|s| s.generation == Generation::V2), "a 2.x spec in the supervisor form");
    for spec in supervised {
        let context = shown(&spec.path);
        let cmd = strings(&spec.body["transform"]["cmd"], &context);
        let options = sidecar::parse(&cmd[1..], &transform_env(&spec), &context);
        // A spout with a --source needs no code of its own.
        let reads_a_source = !options.sources.is_empty();
        assert!(
            !options.command.is_empty() || reads_a_source,
            "{context}: nothing after `--` and no --source: the spout has nothing to commit"
        );
        if !options.command.is_empty() {
            assert_producer_exists(&options.command, &context);
        }
        // A 2.x spout may also archive to a bucket instead of its output repo.
        let sink = options.sink.to_string();
        let object_store = ["s3://", "gs://", "wasb://"].iter().any(|scheme| sink.starts_with(scheme));
        let reaches_spout = matches!((sink.as_str(), spec.generation), ("auto", _) | ("fifo:/pfs/out", Generation::V1))
            || (object_store && spec.generation == Generation::V2);
        assert!(reaches_spout, "{context}: --sink {:?} does not reach a {:?} spout", options.sink, spec.generation);
        assert_eq!(
            sidecar::port(&options, &context),
            service_port(&spec, "internal_port"),
            "{context}: spout.service.internal_port must be the --listen port"
        );
        sidecar::assert_authenticated_if_exposed(&options, &context);
        if let Some(token) = &options.auth_token_file {
            assert!(
                secret_mounts(&spec).iter().any(|dir| token.starts_with(dir)),
                "{context}: the token file {} is in no mounted secret",
                token.display()
            );
        }
        if options.command.is_empty() {
            continue;
        }
        let producer_token = transform_env(&spec).get("PRODUCER_TOKEN_FILE").map(PathBuf::from);
        assert_eq!(
            producer_token, options.auth_token_file,
            "{context}: the producer must send the token the sidecar requires: PRODUCER_TOKEN_FILE is --auth-token-file"
        );
    }
}

/// The separate-container form: the user container runs the producer alone and the
/// pod patch adds the sidecar; the patch must be the one deploy/k8s offers.
#[test]
fn pod_patched_spec_embeds_the_kubernetes_patch() {
    let patched: Vec<Spec> = specs().into_iter().filter(|s| s.body.get("pod_patch").is_some()).collect();
    assert!(!patched.is_empty(), "a spec adding the sidecar with pod_patch");
    let shipped = files::json(&files::deploy_dir().join("k8s/pachyderm-pod-patch.json"));
    for spec in patched {
        let context = shown(&spec.path);
        let patch: Value = serde_json::from_str(str_field(&spec.body, "/pod_patch", &context))
            .unwrap_or_else(|e| panic!("{context}: pod_patch is not JSON: {e}"));
        assert_eq!(patch, shipped, "{context}: pod_patch differs from deploy/k8s/pachyderm-pod-patch.json");
        let name = str_field(&spec.body, "/pipeline/name", &context);
        let sidecar_env = super::kubernetes::container_env(&patch[1]["value"]);
        assert_eq!(
            sidecar_env.get("PPS_PIPELINE_NAME").map(String::as_str),
            Some(name),
            "{context}: the sidecar would commit to another repo"
        );
        let cmd = strings(&spec.body["transform"]["cmd"], &context);
        assert_producer_exists(&cmd, &context);
        let url = transform_env(&spec)
            .remove("SPOUT_URL")
            .unwrap_or_else(|| panic!("{context}: the producer needs SPOUT_URL"));
        let options = super::kubernetes::patched_sidecar(&patch);
        let port = sidecar::port(&options, &context);
        let env = transform_env(&spec);
        let token = env.get("PRODUCER_TOKEN_FILE").map(PathBuf::from);
        assert_eq!(
            token, options.auth_token_file,
            "{context}: the producer must send the sidecar's token (PRODUCER_TOKEN_FILE)"
        );
        if let Some(token) = &token {
            assert!(
                secret_mounts(&spec).iter().any(|dir| token.starts_with(dir)),
                "{context}: the producer's token file is in no mounted secret"
            );
        }
        assert_eq!(
            url,
            format!("http://127.0.0.1:{port}"),
            "{context}: SPOUT_URL must reach the sidecar over the pod's loopback"
        );
        assert_eq!(
            service_port(&spec, "internal_port"),
            port,
            "{context}: spout.service must expose the sidecar's port"
        );
    }
}

/// `python3 /opt/spout/X.py` must name a producer of deploy/pachyderm, which the
/// Dockerfile copies to /opt/spout.
pub fn assert_producer_exists(command: &[String], context: &str) {
    let script = command
        .iter()
        .find_map(|arg| arg.strip_prefix("/opt/spout/"))
        .unwrap_or_else(|| panic!("{context}: {command:?} runs no producer of /opt/spout"));
    let source = files::deploy_dir().join("pachyderm").join(script);
    assert!(source.is_file(), "{context}: {} does not exist", shown(&source));
    assert!(
        files::read(&files::deploy_dir().join("Dockerfile")).contains("COPY deploy/pachyderm/*.py /opt/spout/"),
        "deploy/Dockerfile no longer copies the producers to /opt/spout"
    );
}

#[test]
fn producers_compile() {
    let scripts = files::with_extension(&["py"]);
    assert!(scripts.len() >= 3, "two producers and their client module");
    let status = python::command()
        .args(["-m", "py_compile"])
        .args(&scripts)
        .env("PYTHONPYCACHEPREFIX", std::env::temp_dir().join("spout-deploy-pycache"))
        .status()
        .expect("Python runs (the example producers are Python)");
    assert!(status.success(), "the example producers do not compile");
}
