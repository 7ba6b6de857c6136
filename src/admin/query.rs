//! Reading a request's query string: parameters decoded as HTTP clients encode them, and the
//! page of a list a request asks for. A value that is not what it should be is an error that
//! says so, never a silent default.

use std::borrow::Cow;

/// The value of one `name=value` pair of a query string, decoded as HTTP clients encode it
/// (`%3A`, `+` for a space), so that an encoded request means what the plain one does.
pub fn parameter<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// Which part of a ranked list a request wants: `limit` entries from `offset` on. Lists can be
/// long (a thousand hot keys), so a client such as the admin page reads them a page at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
}

impl Page {
    /// The page named by the `offset` (default 0) and `limit` (default `default_limit`)
    /// parameters of `query`.
    pub fn parse(query: &str, default_limit: usize) -> Result<Page, String> {
        let number = |name: &str, default: usize| match parameter(query, name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("{name} must be a whole number, not {text:?}")),
        };
        Ok(Page {
            offset: number("offset", 0)?,
            limit: number("limit", default_limit)?,
        })
    }

    /// How many of the top entries to ask a report for: enough to fill this page and to tell
    /// whether another follows it.
    pub fn wanted(self) -> usize {
        self.offset.saturating_add(self.limit).saturating_add(1)
    }

    /// This page of `top` (a list's first entries: at least [`Page::wanted`] of them, or all
    /// when the list is shorter), and whether entries follow it.
    pub fn cut<T>(self, top: Vec<T>) -> (Vec<T>, bool) {
        let more = top.len() > self.offset.saturating_add(self.limit);
        let page = top.into_iter().skip(self.offset).take(self.limit).collect();
        (page, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_read_and_cut() {
        let page = Page::parse("offset=2&limit=3", 20).unwrap();
        assert_eq!(
            page,
            Page {
                offset: 2,
                limit: 3
            }
        );
        assert_eq!(page.wanted(), 6);
        assert_eq!(page.cut((0..6).collect()), (vec![2, 3, 4], true));
        assert_eq!(page.cut((0..5).collect()), (vec![2, 3, 4], false));
        assert_eq!(page.cut((0..1).collect()), (vec![], false));
        assert_eq!(
            Page::parse("", 20).unwrap(),
            Page {
                offset: 0,
                limit: 20
            }
        );
        let huge = Page::parse(&format!("offset={}&limit=5", usize::MAX), 20).unwrap();
        assert_eq!(huge.wanted(), usize::MAX);
    }

    #[test]
    fn a_bad_number_says_what_is_wrong() {
        assert_eq!(
            Page::parse("limit=ten", 20),
            Err("limit must be a whole number, not \"ten\"".to_string())
        );
        assert!(Page::parse("offset=-1", 20).unwrap_err().contains("offset"));
    }

    #[test]
    fn parameters_are_decoded() {
        assert_eq!(
            parameter("window=1%6D&by=a+b", "window").as_deref(),
            Some("1m")
        );
        assert_eq!(
            parameter("window=1%6D&by=a+b", "by").as_deref(),
            Some("a b")
        );
        assert_eq!(parameter("window=1m", "by"), None);
    }
}
