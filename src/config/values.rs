//! Value types of the config file that validate themselves while being read, so that an error
//! points at the offending value.

use std::fmt;
use std::time::Duration;

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{Deserializer, Error};
use serde::{Deserialize, Serialize, Serializer};

const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration written with its unit, e.g. `"250ms"`, `"5s"`, `"1m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(Duration);

impl ConfigDuration {
    pub const fn from_millis(millis: u64) -> Self {
        ConfigDuration(Duration::from_millis(millis))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(self.0))
    }
}

impl JsonSchema for ConfigDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "a duration with its unit, such as \"250ms\", \"5s\" or \"15m\"",
            "pattern": "^([0-9]+ *[a-zµ]+ *)+$"
        })
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration = humantime::parse_duration(&text).map_err(|_| {
            D::Error::custom(format!(
                "invalid duration {text:?}: write a number with a unit, such as \"250ms\" or \"5s\""
            ))
        })?;
        if duration > MAX_DURATION {
            return Err(D::Error::custom(format!(
                "invalid duration {text:?}: must be at most 365 days"
            )));
        }
        if duration.is_zero() {
            return Err(D::Error::custom(format!(
                "invalid duration {text:?}: must be greater than zero"
            )));
        }
        Ok(ConfigDuration(duration))
    }
}

/// A `host:port` address; the host may be a name, resolved when connecting (so a Redis that
/// moves behind the same name is followed on reconnect).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    pub fn new(host: &str, port: u16) -> Self {
        HostPort {
            host: host.to_string(),
            port,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for HostPort {
    fn schema_name() -> Cow<'static, str> {
        "HostPort".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "host:port; a host name is resolved on every connect",
            "pattern": "^.+:[0-9]+$"
        })
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let invalid = || D::Error::custom(format!("invalid address {text:?}: expected host:port"));
        let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| invalid())?;
        if host.is_empty() || port == 0 {
            return Err(invalid());
        }
        Ok(HostPort::new(host, port))
    }
}

/// A `tracing` filter directive, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel(String);

impl LogLevel {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel("info".into())
    }
}

impl Serialize for LogLevel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl JsonSchema for LogLevel {
    fn schema_name() -> Cow<'static, str> {
        "LogLevel".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "a tracing filter such as \"info\" or \"keyward=debug,info\""
        })
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        tracing_subscriber::EnvFilter::builder()
            .parse(&text)
            .map_err(|error| D::Error::custom(format!("invalid log level {text:?}: {error}")))?;
        Ok(LogLevel(text))
    }
}

/// An amount of memory written with its unit, e.g. `"64MB"` or `"512KiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigBytes(u64);

impl ConfigBytes {
    pub const fn from_bytes(bytes: u64) -> ConfigBytes {
        ConfigBytes(bytes)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl Serialize for ConfigBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&bytesize::ByteSize(self.0).display().si())
    }
}

impl JsonSchema for ConfigBytes {
    fn schema_name() -> Cow<'static, str> {
        "Bytes".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "an amount of memory with its unit, such as \"64MB\" or \"512KiB\"",
            "pattern": "^[0-9.]+ *[A-Za-z]*$"
        })
    }
}

impl<'de> Deserialize<'de> for ConfigBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let size: bytesize::ByteSize = text.parse().map_err(|_| {
            D::Error::custom(format!(
                "invalid size {text:?}: write a number with a unit, such as \"64MB\" or \"512KiB\""
            ))
        })?;
        if size.as_u64() == 0 {
            return Err(D::Error::custom(format!(
                "invalid size {text:?}: must be greater than zero"
            )));
        }
        Ok(ConfigBytes(size.as_u64()))
    }
}

/// What is wrong with a `sample_rate` (hot keys', a shadow cache rule's), if anything.
pub fn sample_rate_problem(rate: f64) -> Option<String> {
    (!(rate > 0.0 && rate <= 1.0)).then(|| format!("sample_rate must be in (0, 1], found {rate}"))
}
