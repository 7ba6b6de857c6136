//! Which commands and keys a rule applies to, compiled once per config load.

use crate::command::{flags, CommandInfo, CommandTable};
use crate::config::rules::Rule;
use crate::glob::Glob;
use crate::resp::request::Args;

/// A rule's key patterns and command filter.
#[derive(Debug)]
pub struct RuleMatcher {
    /// No patterns: every key (and keyless commands) match.
    keys: Vec<Glob>,
    /// Indexed by command id; `None` means every command.
    commands: Option<Box<[bool]>>,
}

impl RuleMatcher {
    /// Compiles a rule that `keyward check` accepted (invalid parts are skipped).
    pub fn compile(rule: &impl Rule) -> RuleMatcher {
        let keys = rule
            .keys()
            .iter()
            .filter_map(|key| Glob::new(key.get_ref()).ok())
            .collect();
        let commands = (!rule.commands().is_empty()).then(|| {
            let table = CommandTable::global();
            (0..table.len())
                .map(|id| {
                    let info = table.by_id(id);
                    rule.commands()
                        .iter()
                        .any(|filter| filter_matches(filter.get_ref(), info))
                })
                .collect()
        });
        RuleMatcher { keys, commands }
    }

    pub fn applies_to(&self, info: &CommandInfo) -> bool {
        self.commands
            .as_ref()
            .is_none_or(|allowed| allowed.get(info.id).copied().unwrap_or(false))
    }

    /// Whether the rule looks at keys at all (rules without patterns match whole commands).
    pub fn has_key_patterns(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn matches_key(&self, key: &[u8]) -> bool {
        self.keys.is_empty() || self.keys.iter().any(|glob| glob.matches(key))
    }

    /// The command's keys (at `positions`) that this rule's patterns match.
    pub fn matching_keys<'a>(
        &'a self,
        args: &'a Args<'a>,
        positions: &'a [usize],
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        positions
            .iter()
            .filter_map(|&position| args.get(position))
            .filter(|key| self.matches_key(key))
    }
}

/// A filter is a command name (a container such as `CLIENT` covers its subcommands) or an ACL
/// category. Commands the table does not know count as `@write`, never as reads.
fn filter_matches(filter: &str, info: &CommandInfo) -> bool {
    if let Some(category) = filter.strip_prefix('@') {
        if info
            .categories
            .iter()
            .any(|c| c.eq_ignore_ascii_case(category))
        {
            return true;
        }
        let unknown = info.id == CommandTable::global().unknown().id;
        return unknown && category.eq_ignore_ascii_case("write") && info.has_flag(flags::WRITE);
    }
    let name = &*info.name;
    name.eq_ignore_ascii_case(filter)
        || name
            .split_once('|')
            .is_some_and(|(container, _)| container.eq_ignore_ascii_case(filter))
}
