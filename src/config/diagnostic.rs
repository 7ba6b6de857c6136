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
    pub fn warning(span: Option<Range<usize>>, message: String) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            span,
            message,
        }
    }

    pub(super) fn from_toml(error: &toml::de::Error) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            span: error.span(),
            message: error.message().trim().replace('\n', " "),
        }
    }

    /// `FILE:LINE:COL: error: message`, with 1-based line and column (in characters).
    pub fn render(&self, file: &str, text: &str) -> String {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let (line, column) = self
            .span
            .as_ref()
            .map(|span| line_and_column(text, span.start))
            .unwrap_or((1, 1));
        format!("{file}:{line}:{column}: {severity}: {}", self.message)
    }
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
