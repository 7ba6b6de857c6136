//! Policy rules as SREs write them: one type per kind, and what each kind's rules share
//! ([`Rule`]). Their checks are in `rule_checks`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::values::{ConfigBytes, ConfigDuration};

/// Implements [`Rule`] for a rule type with `name`, `keys` and `commands` fields (and
/// `clients`, when named).
macro_rules! impl_rule {
    ($rule:ty $(, $clients:ident)?) => {
        impl Rule for $rule {
            fn name(&self) -> &Spanned<String> {
                &self.name
            }
            fn keys(&self) -> &[Spanned<String>] {
                &self.keys
            }
            fn commands(&self) -> &[Spanned<String>] {
                &self.commands
            }
            $(
                fn clients(&self) -> &[Spanned<String>] {
                    &self.$clients
                }
            )?
        }
    };
}

/// `enforce` acts on what a rule matches; `shadow` only counts and logs what it would do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// What one rate-limit bucket counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    /// Each key the command touches.
    #[default]
    Key,
    /// Each client: its `CLIENT SETNAME` name, else its address.
    Client,
    /// The whole rule: one bucket for everything it matches.
    Rule,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Answer `-RATELIMITED …` at once.
    #[default]
    Reject,
    /// Hold the command (and what the client pipelined after it) until it conforms, up to
    /// `max_delay`, then reject.
    Delay,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Counted in this keyward process.
    #[default]
    Local,
    /// Counted in Redis, shared by every keyward in front of it.
    Global,
}

/// What a `global` rule does when Redis cannot be asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Allow,
    Deny,
}

/// `[[rate_limit]]`: at most `limit` matching commands per `period` (with `burst`), per bucket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// Names the rule in metrics, logs and errors.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Key patterns in Redis glob syntax; none means every key.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub keys: Vec<Spanned<String>>,
    /// Command names or ACL categories (`@write`); none means every command.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub commands: Vec<Spanned<String>>,
    #[schemars(with = "u32", range(min = 1))]
    pub limit: Spanned<u32>,
    pub period: ConfigDuration,
    /// Commands allowed at once after a quiet spell; defaults to `limit`.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub burst: Option<Spanned<u32>>,
    #[serde(default)]
    pub bucket: Bucket,
    #[serde(default)]
    pub action: Action,
    /// With `action = "delay"`: the longest a command is held. Defaults to 250ms.
    #[serde(default)]
    #[schemars(with = "Option<ConfigDuration>")]
    pub max_delay: Option<Spanned<ConfigDuration>>,
    #[serde(default)]
    #[schemars(with = "Option<Scope>")]
    pub scope: Option<Spanned<Scope>>,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default)]
    pub mode: Mode,
}

impl RateLimitRule {
    pub fn burst(&self) -> u32 {
        self.burst
            .as_ref()
            .map_or(*self.limit.get_ref(), |burst| *burst.get_ref())
    }

    /// The time between two cells, `period / limit` (at least a nanosecond; a rule finer than
    /// that is refused by the checks).
    pub fn interval(&self) -> std::time::Duration {
        let limit = (*self.limit.get_ref()).max(1);
        (self.period.get() / limit).max(std::time::Duration::from_nanos(1))
    }

    pub fn scope(&self) -> Scope {
        self.scope
            .as_ref()
            .map_or(Scope::Local, |scope| *scope.get_ref())
    }

    pub fn max_delay(&self) -> std::time::Duration {
        self.max_delay
            .as_ref()
            .map_or(std::time::Duration::from_millis(250), |delay| {
                delay.get_ref().get()
            })
    }
}

/// `[[deny]]`: commands refused with `-NOPERM` before they reach Redis.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Command names or ACL categories (`@dangerous`); none means every command.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub commands: Vec<Spanned<String>>,
    /// Key patterns; none means whatever the keys (and keyless commands too).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub keys: Vec<Spanned<String>>,
    /// Client names (`CLIENT SETNAME`) or addresses, as glob patterns; none means everyone.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub clients: Vec<Spanned<String>>,
    #[serde(default)]
    pub mode: Mode,
}

impl_rule!(DenyRule, clients);

/// What every kind of rule has: a name, key patterns and command filters.
pub trait Rule {
    fn name(&self) -> &Spanned<String>;
    fn keys(&self) -> &[Spanned<String>];
    fn commands(&self) -> &[Spanned<String>];
    /// Client patterns, for the kinds that choose clients; none means every client.
    fn clients(&self) -> &[Spanned<String>] {
        &[]
    }
}

impl_rule!(RateLimitRule);

/// `[[cache]]`: reads of matching keys answered from keyward's memory until Redis says the key
/// changed, or `ttl` passes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Key patterns in Redis glob syntax; none means every key.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub keys: Vec<Spanned<String>>,
    /// Cacheable read commands (`GET`, `HGETALL`, `MGET`…); none means every one.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub commands: Vec<Spanned<String>>,
    /// The longest an entry is served, whatever Redis says.
    pub ttl: ConfigDuration,
    /// Bytes of keys and replies this rule may hold; the least used entries go first.
    pub max_memory: ConfigBytes,
    /// Whether a nil reply (a missing key) is cached too.
    #[serde(default)]
    pub cache_nil: bool,
    #[serde(default)]
    pub mode: Mode,
    /// Shadow mode: the fraction of keys (chosen by a hash of the key) whose reads the rule
    /// follows, in (0, 1]; its figures are scaled back up. Default: every key until the rule
    /// keeps more than 8,192 entries, then half as many keys each time it does again.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub sample_rate: Option<Spanned<f64>>,
}

impl_rule!(CacheRule);

/// `[[lock]]`: keys used as locks (`SET key token NX PX ms`). A losing attempt waits in a FIFO
/// queue for the key, up to `max_wait`, instead of failing at once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockRule {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Key patterns in Redis glob syntax.
    #[schemars(with = "Vec<String>")]
    pub keys: Vec<Spanned<String>>,
    /// The longest a losing attempt is held before it gets the nil Redis gave. Default 5s.
    #[serde(default = "default_max_wait")]
    pub max_wait: ConfigDuration,
    /// Waiters per key; beyond it, an attempt gets Redis's answer at once. Default 1000.
    #[serde(default = "default_max_waiters")]
    #[schemars(with = "u32", range(min = 1))]
    pub max_waiters: std::num::NonZeroU32,
    #[serde(default)]
    pub mode: Mode,
}

/// `[[route]]`: reads that may go to a replica of the primary serving them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Key patterns in Redis glob syntax; every key of a read must match one.
    #[schemars(with = "Vec<String>")]
    pub keys: Vec<Spanned<String>>,
    /// Read commands or ACL categories (`@read`); none means every read. A command that
    /// writes never goes to a replica, whatever this says.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub commands: Vec<Spanned<String>>,
    #[serde(default)]
    pub read_from: ReadFrom,
    /// A replica further behind its primary is not read from; Redis reports a replica's lag
    /// in whole seconds. Also how long a session that wrote reads from the primary alone.
    /// Default 1s.
    #[serde(default = "default_max_lag")]
    pub max_lag: ConfigDuration,
}

impl_rule!(RouteRule);

/// Where a `[[route]]`'s reads go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// The primary, as without the rule.
    #[default]
    Primary,
    /// A replica within `max_lag`; with none, the read gets an error.
    Replica,
    /// A replica within `max_lag`, else the primary.
    ReplicaPreferred,
}

fn default_max_lag() -> ConfigDuration {
    ConfigDuration::from_millis(1000)
}

fn default_max_wait() -> ConfigDuration {
    ConfigDuration::from_millis(5000)
}

fn default_max_waiters() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(1000).unwrap_or(std::num::NonZeroU32::MIN)
}

impl Rule for LockRule {
    fn name(&self) -> &Spanned<String> {
        &self.name
    }
    fn keys(&self) -> &[Spanned<String>] {
        &self.keys
    }
    /// Lock rules apply to `SET … NX` only.
    fn commands(&self) -> &[Spanned<String>] {
        &[]
    }
}
