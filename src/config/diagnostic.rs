//! Config errors and warnings that point at the place in the file, as `FILE:LINE:COL`.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Byte range in the file; `None` when the problem has no single place.
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(span: Range<usize>, message: String) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            span: Some(span),
            message,
        }
    }

    pub fn warning(span: Option<Range<usize>>, message: String) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            span,
            message,
        }
    }

    pub(super) fn from_toml(error: &toml::de::Error) -> Diagnostic {
        let mut message = error.message().trim().replace('\n', " ");
        if let Some(hint) = unknown_field_hint(&message) {
            message.push_str(&hint);
        }
        Diagnostic {
            severity: Severity::Error,
            span: error.span(),
            message,
        }
    }

    /// Names the offending text when the message does not already show it.
    pub(super) fn with_found(mut self, text: &str) -> Diagnostic {
        let found = self
            .span
            .as_ref()
            .and_then(|span| text.get(span.clone()))
            .map(str::trim)
            .filter(|found| !found.is_empty() && !found.contains('\n') && found.len() <= 80);
        if let Some(found) = found {
            if !self.message.contains(found.trim_matches('"')) {
                self.message.push_str(&format!(" (found {found})"));
            }
        }
        self
    }

    /// The line and column (1-based, in characters) where the diagnostic points.
    pub fn position(&self, text: &str) -> (usize, usize) {
        self.span
            .as_ref()
            .map_or((1, 1), |span| line_and_column(text, span.start))
    }

    /// `FILE:LINE:COL: error: message`, with 1-based line and column (in characters).
    pub fn render(&self, file: &str, text: &str) -> String {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let (line, column) = self.position(text);
        format!("{file}:{line}:{column}: {severity}: {}", self.message)
    }
}

/// serde says "unknown field `pool_sise`, expected one of `address`, `pool_size`, …"; this
/// names the closest of the expected ones.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let candidates = expected.split('`').skip(1).step_by(2);
    closest(field, candidates).map(|name| format!("; did you mean `{name}`?"))
}

/// The candidate closest to `word`, if any is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// The 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    line_and_column(text, offset).0
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
