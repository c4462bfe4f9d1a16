//! The sidecar as a container of its own: the Deployment of deploy/k8s and the pod
//! patch Pachyderm applies to a spout's worker pod. Probes, ports, drain time, memory
//! and mounts must agree with the sidecar's options.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use spout_sidecar::config::Options;

use super::files::{self, shown};
use super::sidecar;

/// Volumes Pachyderm's worker pod has before the patch (worker_rc.go): the one holding
/// /pfs, and, in 2.x spouts, the pachctl config with pachd's address and a token.
const PACHYDERM_VOLUMES: [&str; 2] = ["pachyderm-worker", "pachyderm-pachctl-secret"];
const PACHYDERM_SECRET_VOLUMES: [&str; 1] = ["pachyderm-pachctl-secret"];

/// What the sidecar needs beyond its buffer (the memory target bounds peak RSS by
/// --max-buffer-bytes + 64 MiB).
const OVERHEAD_BYTES: u64 = 64 << 20;

struct Pod {
    context: String,
    spec: Value,
    annotations: Value,
    labels: Value,
    /// Volumes that exist without being declared in `spec` (Pachyderm's own).
    given_volumes: &'static [&'static str],
    given_secret_volumes: &'static [&'static str],
}

fn deployment_manifests() -> Vec<Value> {
    files::yaml_documents(&files::deploy_dir().join("k8s/deployment.yaml"))
}

fn pod_patch() -> Value {
    files::json(&files::deploy_dir().join("k8s/pachyderm-pod-patch.json"))
}

fn pods() -> Vec<Pod> {
    let mut pods: Vec<Pod> = deployment_manifests()
        .into_iter()
        .filter(|doc| doc["kind"] == "Deployment")
        .map(|doc| Pod {
            context: format!("deploy/k8s/deployment.yaml: Deployment {}", doc["metadata"]["name"]),
            spec: doc["spec"]["template"]["spec"].clone(),
            annotations: doc["spec"]["template"]["metadata"]["annotations"].clone(),
            labels: doc["spec"]["template"]["metadata"]["labels"].clone(),
            given_volumes: &[],
            given_secret_volumes: &[],
        })
        .collect();
    assert_eq!(pods.len(), 1, "deploy/k8s/deployment.yaml: one Deployment");
    pods.push(Pod {
        context: "deploy/k8s/pachyderm-pod-patch.json".into(),
        spec: patched_pod_spec(&pod_patch()),
        annotations: Value::Null,
        labels: Value::Null,
        given_volumes: &PACHYDERM_VOLUMES,
        given_secret_volumes: &PACHYDERM_SECRET_VOLUMES,
    });
    pods
}

/// What the JSON patch adds to the worker's pod spec. Only appends and a scalar are
/// expected: the patch must not depend on the order of Pachyderm's own containers.
fn patched_pod_spec(patch: &Value) -> Value {
    let mut spec = json!({"containers": [], "volumes": []});
    for op in patch.as_array().expect("a JSON patch is an array") {
        assert_eq!(op["op"], "add", "pod patch: only `add` operations, got {op}");
        let path = op["path"].as_str().expect("op.path");
        assert_eq!(
            path.matches('/').count() - usize::from(path.ends_with("/-")),
            1,
            "pod patch: {path} reaches inside Pachyderm's containers"
        );
        match path.strip_suffix("/-") {
            Some(list) => spec[&list[1..]]
                .as_array_mut()
                .unwrap_or_else(|| panic!("pod patch: appends to {list}"))
                .push(op["value"].clone()),
            None => spec[&path[1..]] = op["value"].clone(),
        }
    }
    spec
}

pub fn container_env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|var| {
                    (
                        var["name"].as_str().expect("env name").to_owned(),
                        var["value"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sidecar_container(pod: &Pod) -> &Value {
    pod.spec["containers"]
        .as_array()
        .and_then(|containers| containers.iter().find(|c| c["name"] == "spout-sidecar"))
        .unwrap_or_else(|| panic!("{}: no container named spout-sidecar", pod.context))
}

fn sidecar_options(container: &Value, context: &str) -> Options {
    assert!(
        container.get("command").is_none(),
        "{context}: the image's ENTRYPOINT is the sidecar; give options as args"
    );
    let args: Vec<String> =
        serde_json::from_value(container["args"].clone()).unwrap_or_else(|e| panic!("{context}: args: {e}"));
    sidecar::parse(&args, &container_env(container), context)
}

/// The options of the sidecar container a pod patch adds.
pub fn patched_sidecar(patch: &Value) -> Options {
    let pod = patched_pod_spec(patch);
    let container = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "spout-sidecar"))
        .expect("the patch adds spout-sidecar");
    sidecar_options(container, "pod patch")
}

/// `384Mi`, `1Gi`, `512M`: the memory quantities Kubernetes manifests use.
fn quantity_bytes(quantity: &str) -> u64 {
    let units =
        [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("K", 1000), ("M", 1_000_000), ("G", 1_000_000_000)];
    let (number, unit) = units
        .iter()
        .find_map(|(suffix, unit)| quantity.strip_suffix(suffix).map(|n| (n, *unit)))
        .unwrap_or((quantity, 1));
    number.parse::<u64>().unwrap_or_else(|_| panic!("memory quantity {quantity}")) * unit
}

fn seconds(value: &Value, context: &str) -> u64 {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{context}: {value} is not seconds"))
}

/// The probe's port: the named container port or a number, resolved to a number.
fn probe_port(container: &Value, probe: &str, context: &str) -> u16 {
    let port = &container[probe]["httpGet"]["port"];
    let number = match port.as_str() {
        Some(name) => container["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["name"] == name))
            .map(|p| p["containerPort"].clone()),
        None => Some(port.clone()),
    };
    number
        .and_then(|n| n.as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or_else(|| panic!("{context}: {probe} port {port} is no container port"))
}

#[test]
fn sidecar_containers_are_probed_drained_and_sized() {
    for pod in pods() {
        let context = &pod.context;
        let container = sidecar_container(&pod);
        let options = sidecar_options(container, context);
        let port = sidecar::port(&options, context);
        sidecar::assert_authenticated_if_exposed(&options, context);
        let image = container["image"].as_str().unwrap_or_default();
        assert!(
            image.rsplit_once(':').is_some_and(|(repo, _)| repo.ends_with("/spout-sidecar")),
            "{context}: image {image} is not the sidecar image"
        );

        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            assert_eq!(container[probe]["httpGet"]["path"], path, "{context}: {probe} must GET {path}");
            assert_eq!(probe_port(container, probe, context), port, "{context}: {probe} must reach --listen");
        }

        let pre_stop: Vec<String> =
            serde_json::from_value(container["lifecycle"]["preStop"]["exec"]["command"].clone())
                .unwrap_or_else(|_| panic!("{context}: a preStop exec hook lets producers finish before SIGTERM"));
        let pause = match pre_stop.as_slice() {
            [sleep, secs] if sleep == "sleep" => {
                secs.parse::<u64>().unwrap_or_else(|_| panic!("{context}: sleep {secs}"))
            }
            other => panic!("{context}: preStop {other:?}, expected [sleep, SECONDS]"),
        };
        let grace = seconds(&pod.spec["terminationGracePeriodSeconds"], context);
        assert!(
            grace > pause + options.shutdown_timeout.as_secs(),
            "{context}: terminationGracePeriodSeconds {grace} must exceed the preStop pause {pause} s plus --shutdown-timeout {:?}, or the kubelet kills a draining sidecar",
            options.shutdown_timeout
        );

        let limit = quantity_bytes(
            container["resources"]["limits"]["memory"].as_str().unwrap_or_else(|| panic!("{context}: no memory limit")),
        );
        assert!(
            limit >= options.max_buffer_bytes + OVERHEAD_BYTES,
            "{context}: memory limit {limit} leaves no room beyond --max-buffer-bytes {}",
            options.max_buffer_bytes
        );

        assert_mounts(&pod, container, &options);
    }
}

/// Every mount names a volume of the pod; the token sits in a secret; a `dir:` sink
/// writes to a writable mount (the root filesystem is read-only).
fn assert_mounts(pod: &Pod, container: &Value, options: &Options) {
    let context = &pod.context;
    let declared = pod.spec["volumes"].as_array().cloned().unwrap_or_default();
    let is_secret = |name: &str| {
        pod.given_secret_volumes.contains(&name)
            || declared.iter().any(|v| v["name"] == name && v.get("secret").is_some())
    };
    let mounts = container["volumeMounts"].as_array().cloned().unwrap_or_default();
    for mount in &mounts {
        let name = mount["name"].as_str().expect("mount name");
        assert!(
            pod.given_volumes.contains(&name) || declared.iter().any(|v| v["name"] == name),
            "{context}: mounts undeclared volume {name}"
        );
    }
    let mount_of =
        |path: &Path| mounts.iter().find(|m| m["mountPath"].as_str().is_some_and(|dir| path.starts_with(dir)));
    if let Some(token) = &options.auth_token_file {
        let mount =
            mount_of(token).unwrap_or_else(|| panic!("{context}: token file {} is not mounted", token.display()));
        assert!(is_secret(mount["name"].as_str().unwrap()), "{context}: the token must come from a Secret");
    }
    if let Some(dir) = options.sink.to_string().strip_prefix("dir:").map(Path::new) {
        let mount = mount_of(dir).unwrap_or_else(|| panic!("{context}: dir sink {} is on no volume", dir.display()));
        assert_ne!(mount["readOnly"], true, "{context}: dir sink {} is read-only", dir.display());
    }
}

#[test]
fn service_and_scrape_annotations_reach_the_sidecar() {
    let manifests = deployment_manifests();
    let pod = pods().into_iter().next().expect("the Deployment's pod");
    let container = sidecar_container(&pod);
    let port = sidecar::port(&sidecar_options(container, &pod.context), &pod.context);
    let services: Vec<&Value> = manifests.iter().filter(|doc| doc["kind"] == "Service").collect();
    assert_eq!(services.len(), 1, "deploy/k8s/deployment.yaml: one Service");
    for (label, value) in services[0]["spec"]["selector"].as_object().expect("Service selector") {
        assert_eq!(&pod.labels[label], value, "the Service selects no pod of the Deployment");
    }
    for service_port in services[0]["spec"]["ports"].as_array().expect("Service ports") {
        let target = &service_port["targetPort"];
        let reaches = container["ports"]
            .as_array()
            .expect("container ports")
            .iter()
            .any(|p| (p["name"] == *target || p["containerPort"] == *target) && p["containerPort"] == port);
        assert!(reaches, "Service targetPort {target} is not the sidecar's port {port}");
    }
    assert_eq!(pod.annotations["prometheus.io/port"], port.to_string(), "{}: scrape port", pod.context);
    let path = pod.annotations["prometheus.io/path"].as_str().unwrap_or_default();
    assert!(sidecar::ENDPOINTS.contains(&path), "{}: scrape path {path} is no endpoint", pod.context);
    let claims: Vec<&str> = manifests
        .iter()
        .filter(|d| d["kind"] == "PersistentVolumeClaim")
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    for volume in pod.spec["volumes"].as_array().expect("volumes") {
        if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
            assert!(
                claims.contains(&claim),
                "{}: claim {claim} is not in the manifest",
                shown(&files::deploy_dir().join("k8s/deployment.yaml"))
            );
        }
    }
}

/// The other containers of the Deployment's pod are producers: they reach the sidecar
/// over the pod's loopback and send the token it requires, read from the same secret.
#[test]
fn producers_reach_the_sidecar_with_its_token() {
    let pod = pods().into_iter().next().expect("the Deployment's pod");
    let context = &pod.context;
    let sidecar = sidecar_container(&pod);
    let options = sidecar_options(sidecar, context);
    let port = sidecar::port(&options, context);
    let secret_of = |container: &Value, file: &Path| {
        container["volumeMounts"]
            .as_array()
            .and_then(|mounts| mounts.iter().find(|m| m["mountPath"].as_str().is_some_and(|dir| file.starts_with(dir))))
            .map(|mount| mount["name"].clone())
            .unwrap_or_else(|| panic!("{context}: {} is not mounted in {}", file.display(), container["name"]))
    };
    let producers: Vec<&Value> = pod.spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter(|c| c["name"] != "spout-sidecar")
        .collect();
    assert!(!producers.is_empty(), "{context}: no producer beside the sidecar");
    for producer in producers {
        let env = container_env(producer);
        assert_eq!(
            env.get("SPOUT_URL"),
            Some(&format!("http://127.0.0.1:{port}")),
            "{context}: {} must reach the sidecar",
            producer["name"]
        );
        let token = options.auth_token_file.as_deref().expect("the sidecar listens beyond loopback");
        assert_eq!(
            env.get("PRODUCER_TOKEN_FILE").map(Path::new),
            Some(token),
            "{context}: {} must send the sidecar's token",
            producer["name"]
        );
        assert_eq!(
            secret_of(producer, token),
            secret_of(sidecar, token),
            "{context}: the producer's token comes from another volume"
        );
        super::pachyderm::assert_producer_exists(
            &serde_json::from_value::<Vec<String>>(producer["command"].clone()).expect("producer command"),
            context,
        );
    }
}

/// (manifest, path) of every HTTP probe on the sidecar: the kubelet sends no token.
pub fn probe_paths() -> Vec<(String, String)> {
    pods()
        .iter()
        .flat_map(|pod| {
            let container = sidecar_container(pod);
            ["readinessProbe", "livenessProbe"].map(|probe| {
                let path = container[probe]["httpGet"]["path"].as_str().unwrap_or_default();
                (pod.context.clone(), path.to_owned())
            })
        })
        .collect()
}
