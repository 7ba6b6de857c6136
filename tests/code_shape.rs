//! The crate stays readable in pieces: no source file over 600 lines, no function over 100.
//! Past those sizes a module holds more than one concern, or a function more than one step,
//! and a newcomer has to read it all to change any of it.

mod support;

use support::source_files;

const MAX_FILE_LINES: usize = 600;
const MAX_FUNCTION_LINES: usize = 100;

/// Functions longer than the limit, as (name, first line, lines), from the signature to the
/// closing brace. The code is `rustfmt`-formatted, so a function's closing brace is the first
/// line after its signature that is `}` at the signature's indentation.
fn long_functions(source: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = source.lines().collect();
    let mut long = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let signature = ["pub(super) ", "pub(crate) ", "pub ", ""]
            .iter()
            .filter_map(|visibility| code.strip_prefix(visibility))
            .map(|rest| rest.strip_prefix("async ").unwrap_or(rest))
            .find_map(|rest| rest.strip_prefix("fn "));
        let Some(signature) = signature else {
            continue;
        };
        let closing = format!("{indent}}}");
        let Some(length) = lines[start..]
            .iter()
            .position(|line| *line == closing)
            .map(|end| end + 1)
        else {
            continue;
        };
        if length > MAX_FUNCTION_LINES {
            let name = signature
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or_default();
            long.push((name.to_string(), start + 1, length));
        }
    }
    long
}

#[test]
fn files_and_functions_stay_small() {
    let mut too_long = Vec::new();
    for (relative, source) in source_files() {
        let relative = relative.display();
        let lines = source.lines().count();
        if lines > MAX_FILE_LINES {
            too_long.push(format!("{relative}: {lines} lines"));
        }
        for (name, line, length) in long_functions(&source) {
            too_long.push(format!("{relative}:{line}: fn {name} has {length} lines"));
        }
    }
    assert!(too_long.is_empty(), "too long:\n{}", too_long.join("\n"));
}

#[test]
fn the_measure_finds_a_long_function() {
    let body = "    x += 1;\n".repeat(MAX_FUNCTION_LINES);
    let source = format!("impl A {{\n    pub(super) async fn long(&self) {{\n{body}    }}\n}}\n");
    assert_eq!(
        long_functions(&source),
        [("long".to_string(), 2, MAX_FUNCTION_LINES + 2)]
    );
    assert!(long_functions("fn short() {\n}\n").is_empty());
}
