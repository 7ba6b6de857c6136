//! keyward: a Redis-protocol sidecar proxy.
//!
//! A request travels through these modules, in order:
//!
//! - [`server`] accepts client connections and starts a session for each.
//! - [`session`] decodes a client's requests ([`resp::request`]), answers connection state
//!   itself, forwards everything else in batches, and writes replies back in request order.
//! - [`command`] says what each command is: its flags, where its keys are, and how it affects
//!   the connection it runs on (generated from Redis's own `COMMAND` output).
//! - [`upstream`] holds the connections to Redis: pools shared by sessions, and dedicated
//!   connections for sessions with connection state.
//! - [`resp`] is the wire protocol: request decoding, reply delimiting, reply encoding.
//!
//! - [`cache`] answers cacheable reads from memory, kept coherent by Redis's invalidations.
//! - [`lock`] queues losing lock attempts and hands the lock to them in arrival order.
//!
//! Around them: [`config`] (the TOML file and its diagnostics), [`admin`] (HTTP: metrics and
//! health), [`metrics`] (every exported series), [`context`] (state shared by sessions), [`directory`] (sessions by client id), [`net`] (socket reads),
//! [`signals`] and [`app`] (start and stop), [`top`] (the `keyward top` view).

pub mod admin;
pub mod app;
pub mod command;
pub mod config;
pub mod context;
pub mod directory;
pub mod glob;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod reload;
pub mod reports;
pub mod resp;
pub mod secret;
pub mod server;
pub mod session;
pub mod signals;
pub mod tls;
pub mod top;
pub mod upstream;
