//! keyward: a Redis-protocol sidecar proxy.
//!
//! A request travels through these modules, in order:
//!
//! - [`server`] accepts client connections and starts a session for each.
//! - [`session`] is the client's I/O loop: it decodes requests ([`resp::request`]), takes each
//!   through the request pipeline, and writes replies back in request order.
//! - [`command`] says what each command is, resolved once per request: its flags, where its
//!   keys are, how it affects the connection it runs on (generated from Redis's own `COMMAND`
//!   output), and whether it is a cacheable read.
//! - [`policy`] holds the policies, each a folder that owns its rules and state and
//!   implements the phase trait (`policy::phase::Phase`). They run in the order the phase list
//!   gives (`policy::phases`): `deny`, `rate_limit`, `lock`, `cache`, `route` decide on each
//!   request: pass it on, answer it, hold it, or take it and answer it later; each hears of
//!   the writes it watches once Redis answers them. Then those that follow requests to their
//!   answers (`hotkeys`) start following it, and hear the answer the client gets.
//! - after the phases, the session routes the request: the batch for its connection (shared,
//!   or its own), keyward's own answer, or a connection aside.
//! - [`upstream`] holds the connections to Redis: pools shared by sessions, connections of a
//!   session's own, and the invalidation connection that tells which keys changed; in
//!   cluster mode the routers to the cluster's nodes, in sentinel mode the primary the
//!   sentinels name.
//! - [`resp`] is the wire protocol: request decoding and encoding, reply delimiting, replies.
//!
//! Around them: [`config`] (the TOML file and its diagnostics), [`reload`] (the config and
//! policies in force, swapped on reload), [`context`] (state shared by sessions),
//! [`directory`] (sessions by client id), [`reports`] (what keyward says about itself),
//! [`admin`] (HTTP: metrics, health, reports, and the admin page that shows them),
//! [`http_api`] (Upstash's REST API, each request a session), [`metrics`] (every exported
//! series), [`net`] and
//! [`tls`] (sockets), [`inbox`] (the channel that brings a session its replies), [`glob`]
//! (Redis's key patterns), [`secret`] (comparing secrets),
//! [`logging`], [`signals`] and [`app`] (start and stop), and [`top`] (`keyward top`).
//!
//! # Layers
//!
//! Lowest first. A module uses only modules of layers below its own, never one beside or
//! above it (`tests/layers.rs` checks every `crate::` path against this list):
//!
//! 1. `resp`, `secret`, `glob`, `net`, `logging`, `directory`, `inbox`
//! 2. `command`
//! 3. `config`, `metrics`
//! 4. `tls`
//! 5. `upstream`
//! 6. `policy`
//! 7. `reload`
//! 8. `context`
//! 9. `reports`
//! 10. `session`
//! 11. `server`, `admin`, `http_api`, `signals`, `top`
//! 12. `app`

mod admin;
pub mod app;
pub mod command;
pub mod config;
mod context;
mod directory;
mod glob;
mod http_api;
mod inbox;
pub mod logging;
mod metrics;
mod net;
pub mod policy;
mod reload;
mod reports;
pub mod resp;
mod secret;
mod server;
mod session;
pub mod signals;
pub mod tls;
pub mod top;
pub mod upstream;
