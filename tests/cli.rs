//! The command line as an SRE uses it.

use std::process::Command;

fn keyward(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(args)
        .env_remove("KEYWARD_TEST_UNSET")
        .output()
        .expect("keyward runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path.display().to_string())
}

#[test]
fn check_accepts_the_bundled_configs() {
    for name in ["keyward.toml", "container.toml"] {
        let path = format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"));
        let (code, output) = keyward(&["check", "--config", &path]);
        assert_eq!(code, 0, "{output}");
        assert!(output.contains(": ok"), "{output}");
    }
}

#[test]
fn check_points_at_every_broken_section() {
    let (_dir, path) = config_file(
        "[listen]\naddress = \"127.0.0.1:6380\"\nmax_clients = -1\n\n[upstream]\npool_sise = 4\n",
    );
    let (code, output) = keyward(&["check", "-c", &path]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains(&format!("{path}:3:15: error:")), "{output}");
    assert!(output.contains(&format!("{path}:6:1: error:")), "{output}");
    assert!(output.contains("pool_sise"), "{output}");
}

#[test]
fn check_reports_syntax_errors_and_unreadable_files() {
    let (_dir, path) = config_file("[upstream\naddress = \"x:1\"\n");
    let (code, output) = keyward(&["check", "--config", &path]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains(&format!("{path}:1:")), "{output}");
    let (code, output) = keyward(&["check", "--config", "/nonexistent/keyward.toml"]);
    assert_eq!(code, 2, "{output}");
}

#[test]
fn run_refuses_an_invalid_config_and_an_unset_password_variable() {
    let (_dir, path) = config_file("[upstream]\nrequest_timeout = \"soon\"\n");
    let (code, output) = keyward(&["--config", &path]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(":2:19: error: invalid duration \"soon\""),
        "{output}"
    );

    let (_dir, path) = config_file("[upstream]\npassword_env = \"KEYWARD_TEST_UNSET\"\n");
    let (code, output) = keyward(&["check", "--config", &path]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("warning: environment variable `KEYWARD_TEST_UNSET`"),
        "{output}"
    );
    let (code, output) = keyward(&["--config", &path]);
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("KEYWARD_TEST_UNSET"), "{output}");
}

#[test]
fn version_is_printed() {
    let (code, output) = keyward(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        output.trim(),
        format!("keyward {}", env!("CARGO_PKG_VERSION"))
    );
}
