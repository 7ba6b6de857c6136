//! `keyward check` on fixture files, compared with their expected diagnostics, and the
//! published JSON Schema kept in step with the config types.
//!
//! A fixture `NAME.toml` has its expected output in `NAME.expected` (check's output, then the
//! exit code). Regenerate one by running check from `tests/fixtures/config`.

use std::path::Path;
use std::process::Command;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/config");

fn keyward(args: &[&str], dir: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("keyward runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn fixtures_produce_their_expected_diagnostics() {
    let dir = Path::new(FIXTURES);
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        let (code, output) = keyward(&["check", "-c", name], dir);
        let actual = format!("{output}exit {code}\n");
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        assert_eq!(actual, expected, "{name}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} fixtures found");
}

#[test]
fn json_output_lists_every_diagnostic() {
    let (code, output) = keyward(
        &["check", "-c", "rules.toml", "--format", "json"],
        Path::new(FIXTURES),
    );
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(report["valid"], false);
    let diagnostics = report["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), 12);
    assert_eq!(diagnostics[1]["line"], 8);
    assert_eq!(diagnostics[1]["column"], 9);
    assert_eq!(diagnostics[1]["severity"], "error");
}

#[test]
fn the_published_schema_matches_the_config_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, generated) = keyward(&["schema"], root);
    assert_eq!(code, 0);
    let published = std::fs::read_to_string(root.join("config/keyward.schema.json")).unwrap();
    assert_eq!(
        published, generated,
        "regenerate with: keyward schema > config/keyward.schema.json"
    );
    let schema: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown keys are errors"
    );
    assert!(schema["properties"]["rate_limit"].is_object());
}
