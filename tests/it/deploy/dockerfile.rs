//! deploy/Dockerfile, read instruction by instruction (no Docker engine runs here):
//! multi-stage, a locked release build, a small final image running as non-root.

use super::files;

struct Instruction {
    keyword: String,
    args: String,
}

/// Instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .map(|line| {
            let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            Instruction { keyword: keyword.to_uppercase(), args: args.trim().to_owned() }
        })
        .collect()
}

/// `1.80` as (1, 80).
fn version(text: &str) -> (u32, u32) {
    let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or_else(|_| panic!("version {text}")));
    (parts.next().unwrap(), parts.next().unwrap_or(0))
}

#[test]
fn dockerfile_builds_a_release_binary_into_a_small_non_root_image() {
    let dir = files::deploy_dir();
    let all = instructions(&files::read(&dir.join("Dockerfile")));
    let stages: Vec<&[Instruction]> = {
        let starts: Vec<usize> = all.iter().enumerate().filter(|(_, i)| i.keyword == "FROM").map(|(n, _)| n).collect();
        starts.iter().enumerate().map(|(k, &start)| &all[start..*starts.get(k + 1).unwrap_or(&all.len())]).collect()
    };
    assert!(stages.len() >= 2, "a multi-stage build: the toolchain stays out of the image");

    let builder = stages.iter().find(|s| s[0].args.ends_with(" AS builder")).expect("a stage named builder");
    assert!(builder[0].args.starts_with("rust:"), "the builder starts from the official rust image");
    let build = builder
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .expect("the builder runs cargo build");
    for flag in ["--release", "--locked"] {
        assert!(build.args.contains(flag), "cargo build {flag}: the release profile, the locked dependencies");
    }
    let toolchain = all
        .iter()
        .find_map(|i| i.args.strip_prefix("RUST_VERSION=").filter(|_| i.keyword == "ARG"))
        .expect("ARG RUST_VERSION=");
    let manifest = files::read(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    let needed = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version in Cargo.toml")
        .trim_matches('"');
    assert!(
        version(toolchain) >= version(needed),
        "RUST_VERSION {toolchain} is older than the crate's rust-version {needed}"
    );

    let patch = files::json(&dir.join("k8s/pachyderm-pod-patch.json"));
    let port = super::sidecar::port(&super::kubernetes::patched_sidecar(&patch), "pod patch");
    for stage in stages.iter().filter(|s| s.iter().any(|i| i.keyword == "ENTRYPOINT")) {
        let from = &stage[0].args;
        assert!(!from.starts_with("rust:"), "{from}: an image that runs must not carry the toolchain");
        let user = stage
            .iter()
            .rev()
            .find(|i| i.keyword == "USER")
            .unwrap_or_else(|| panic!("{from}: no USER: it would run as root"));
        let uid = user.args.split(':').next().unwrap();
        assert!(!matches!(uid, "root" | "0"), "{from}: USER {uid} is root");
        assert!(
            stage.iter().any(|i| i.keyword == "EXPOSE" && i.args == port.to_string()),
            "{from}: EXPOSE {port}, the port the manifests use"
        );
        let entrypoint: Vec<String> = serde_json::from_str(
            &stage.iter().find(|i| i.keyword == "ENTRYPOINT").unwrap().args,
        )
        .unwrap_or_else(|_| panic!("{from}: ENTRYPOINT in exec form, so SIGTERM reaches the sidecar and not a shell"));
        let copied = stage
            .iter()
            .any(|i| i.keyword == "COPY" && i.args.starts_with("--from=builder") && i.args.ends_with(&entrypoint[0]));
        assert!(copied, "{from}: ENTRYPOINT {} is not the binary copied from the builder", entrypoint[0]);
    }
    let last = stages.last().unwrap()[0].args.as_str();
    assert!(
        last.contains("slim") || last.contains("distroless"),
        "the default (last) stage is a small image, not {last}"
    );

    let ignored = files::read(&dir.join("Dockerfile.dockerignore"));
    assert!(
        ignored.lines().any(|l| l.trim_end_matches('/') == "target"),
        "Dockerfile.dockerignore: keep target/ out of the build context"
    );
}
