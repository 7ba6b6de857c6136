//! The Kubernetes example (`contrib/kubernetes/keyward-sidecar.yaml`) is valid against the
//! Kubernetes API's schemas (kubernetes-validate, strict: no unknown field), and it is wired
//! as keyward needs: its config passes `keyward check`, the probes and the scrape annotations
//! point at the admin port the config names, the config is mounted as a directory (so
//! ConfigMap updates reach keyward; tests/reload.rs reloads through the kubelet's symlink
//! swap), and a preStop pause plus the drain fit in the termination grace period.
//!
//! The validator is installed by `tests/kubernetes/setup.sh` (which `.ci/run` runs) into
//! `target/tools`, or found on the PATH; without it the test fails rather than pass unseen.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/kubernetes/keyward-sidecar.yaml")
}

/// The validator, and the Python that runs it (which also reads YAML for the checks below).
fn validator() -> (PathBuf, PathBuf) {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin");
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let bin = std::iter::once(local)
        .chain(on_path)
        .find(|dir| dir.join("kubernetes-validate").is_file())
        .unwrap_or_else(|| {
            panic!(
                "kubernetes-validate is not installed: run tests/kubernetes/setup.sh \
                 (.ci/run does) to install it into target/tools"
            )
        });
    let python = ["python", "python3"]
        .iter()
        .map(|name| bin.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"));
    (bin.join("kubernetes-validate"), python)
}

/// The manifest's documents, read by PyYAML (which the validator brings) into JSON.
fn documents(python: &Path, file: &Path) -> Vec<Value> {
    let output = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(file)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from the YAML")
}

fn validate(validator: &Path, file: &Path) -> (bool, String) {
    let output = Command::new(validator)
        .arg("--strict")
        .arg(file)
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_manifests_are_valid_kubernetes() {
    let (validator, _) = validator();
    let (valid, report) = validate(&validator, &manifest());
    assert!(valid, "kubernetes-validate:\n{report}");
    assert_eq!(report.matches("passed").count(), 2, "{report}");

    // The validator does refuse a misspelt field, so its pass means something.
    let text = std::fs::read_to_string(manifest()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, text.replace("readinessProbe:", "readinesProbe:")).unwrap();
    assert!(
        !validate(&validator, &broken).0,
        "a misspelt field is refused"
    );
}

#[test]
fn the_sidecar_is_wired_as_keyward_needs() {
    let (_, python) = validator();
    let documents = documents(&python, &manifest());
    let of_kind = |kind: &str| {
        documents
            .iter()
            .find(|document| document["kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind}"))
    };
    let config_map = of_kind("ConfigMap");
    let deployment = of_kind("Deployment");
    let config_text = config_map["data"]["keyward.toml"]
        .as_str()
        .expect("keyward.toml");

    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("keyward.toml");
    std::fs::write(&config_file, config_text).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["check", "--config"])
        .arg(&config_file)
        .output()
        .expect("keyward check runs");
    assert!(
        check.status.success(),
        "keyward check:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let config: toml::Value = toml::from_str(config_text).unwrap();
    let admin = config["admin"]["address"].as_str().unwrap();
    let admin_port: u64 = admin.rsplit(':').next().unwrap().parse().unwrap();
    let grace = config["shutdown"]["grace_period"].as_str().unwrap();
    let grace = humantime::parse_duration(grace).unwrap().as_secs();

    let pod = &deployment["spec"]["template"];
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin_port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let spec = &pod["spec"];
    let keyward = spec["initContainers"]
        .as_array()
        .into_iter()
        .chain(spec["containers"].as_array())
        .flatten()
        .find(|container| container["name"] == "keyward")
        .expect("a keyward container");
    // A native sidecar: an init container that keeps running alongside the application.
    assert_eq!(keyward["restartPolicy"], "Always");
    let port_named = |name: &Value| -> u64 {
        keyward["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|port| &port["name"] == name || &port["containerPort"] == name)
            .and_then(|port| port["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("a port {name}"))
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &keyward[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            port_named(&get["port"]),
            admin_port,
            "{probe} on the admin port"
        );
    }

    let pause = keyward["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop pause");
    let termination = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        pause + grace < termination,
        "the pause ({pause}s) and the drain ({grace}s) fit in {termination}s"
    );

    let args: Vec<&str> = keyward["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|arg| *arg == "--config").unwrap() + 1];
    let mount = keyward["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|mount| Path::new(config_path).parent() == mount["mountPath"].as_str().map(Path::new))
        .expect("the config's directory is mounted");
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let file = Path::new(config_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        config_map["data"].get(file).is_some(),
        "the ConfigMap holds {file}"
    );

    let token = config["admin"]["token_env"].as_str().unwrap();
    assert!(
        keyward["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|env| env["name"] == token),
        "{token} is set, or keyward would not start"
    );
}
