//! Commands a session answers from its own state, so that one client's connection state never
//! reaches another client sharing the same upstream connection.

use bytes::Bytes;

use super::cluster_view::{self, Whereabouts};
use super::keyward;
use crate::command::{CommandInfo, LocalCommand};
use crate::context::Context;
use crate::resp::reply::{self, ReplyWriter};
use crate::resp::{self, parse_int, Protocol};
use crate::secret;
use crate::upstream::{Login, ServerFacts, UpstreamSettings};

/// A client's connection state as Redis would hold it.
#[derive(Debug, Clone)]
pub struct ClientState {
    pub id: u64,
    pub protocol: Protocol,
    pub db: u32,
    pub name: Option<Vec<u8>>,
    pub lib_name: Option<Vec<u8>>,
    pub lib_version: Option<Vec<u8>>,
    /// Whether the client may run commands: always, unless keyward requires a password.
    pub authenticated: bool,
    /// Cluster mode: `MULTI` was answered, and the connection it opens waits for the next
    /// command, which says which node the transaction runs on.
    pub multi_deferred: bool,
    /// Cluster mode: keyward refused a command after the deferred `MULTI`, before the
    /// transaction reached a node. Redis would abort it, so it is aborted once it does.
    pub multi_refused: bool,
}

impl ClientState {
    pub fn new(id: u64, authenticated: bool) -> ClientState {
        ClientState {
            id,
            protocol: Protocol::Resp2,
            db: 0,
            name: None,
            lib_name: None,
            lib_version: None,
            authenticated,
            multi_deferred: false,
            multi_refused: false,
        }
    }

    /// Commands that recreate this state on a fresh upstream connection.
    pub fn setup_commands(&self) -> Vec<Vec<Vec<u8>>> {
        let name = self
            .name
            .iter()
            .map(|name| vec![b"CLIENT".to_vec(), b"SETNAME".to_vec(), name.clone()]);
        let multi = self.multi_deferred.then(|| vec![b"MULTI".to_vec()]);
        name.chain(multi).collect()
    }
}

/// What the session does after a local command.
#[derive(Debug)]
pub enum Outcome {
    Reply(Bytes),
    /// Reply, then close the connection once everything before it is written (`QUIT`).
    ReplyThenClose(Bytes),
    /// Only Redis can answer this (credentials keyward does not hold, a database it cannot
    /// check): send the command itself on a connection of the session's own, opened with the
    /// client's own credentials when the command carries them.
    NeedsDedicated(Option<Login>),
}

/// Whether the command may change which upstream connection the session uses; such a command
/// waits until the current connection owes nothing, so execution order holds across the switch.
pub fn may_change_connection(command: LocalCommand) -> bool {
    matches!(
        command,
        LocalCommand::Select | LocalCommand::Hello | LocalCommand::Reset | LocalCommand::Auth
    )
}

pub struct LocalContext<'a> {
    pub context: &'a Context,
    pub facts: &'a ServerFacts,
    pub settings: &'a UpstreamSettings,
    /// The password clients must authenticate with, when keyward requires one.
    pub listen_password: Option<&'a str>,
    /// For [`LocalCommand::Cluster`] alone: how the cluster view names keyward.
    pub whereabouts: Option<Whereabouts>,
}

pub fn execute(
    command: LocalCommand,
    info: &CommandInfo,
    args: &[Vec<u8>],
    state: &mut ClientState,
    context: &LocalContext<'_>,
) -> Outcome {
    if !info.arity_ok(args.len()) {
        return error(&format!(
            "ERR wrong number of arguments for '{}' command",
            info.name
        ));
    }
    match command {
        LocalCommand::Select => select(args, state, context),
        LocalCommand::Hello => hello(args, state, context),
        LocalCommand::Auth => auth(args, state, context),
        LocalCommand::Reset => {
            // As in Redis, RESET keeps the client's identity only if no password is needed.
            *state = ClientState::new(state.id, context.listen_password.is_none());
            Outcome::Reply(reply::simple("RESET"))
        }
        LocalCommand::Quit => Outcome::ReplyThenClose(reply::simple("OK")),
        LocalCommand::Replication => {
            error("ERR keyward does not proxy replication: connect replicas to Redis directly")
        }
        LocalCommand::ClientSetName => match valid_name(&args[2]) {
            Ok(name) => {
                state.name = name;
                Outcome::Reply(reply::simple("OK"))
            }
            Err(message) => error(message),
        },
        LocalCommand::ClientGetName => Outcome::Reply(match &state.name {
            Some(name) => ReplyWriter::new(state.protocol).bulk(name).finish(),
            None => ReplyWriter::new(state.protocol).null().finish(),
        }),
        LocalCommand::ClientSetInfo => client_setinfo(args, state),
        LocalCommand::ClientId => Outcome::Reply(
            ReplyWriter::new(state.protocol)
                .integer(state.id as i64)
                .finish(),
        ),
        LocalCommand::Keyward => {
            Outcome::Reply(keyward::execute(args, context.context, state.protocol))
        }
        LocalCommand::DeferredMulti => {
            state.multi_deferred = true;
            state.multi_refused = false;
            Outcome::Reply(reply::simple("OK"))
        }
        LocalCommand::Cluster => match &context.whereabouts {
            Some(whereabouts) => {
                Outcome::Reply(cluster_view::answer(args, state.protocol, whereabouts))
            }
            None => error("ERR This instance has cluster support disabled"),
        },
    }
}

fn error(message: &str) -> Outcome {
    Outcome::Reply(reply::error(message))
}

fn select(args: &[Vec<u8>], state: &mut ClientState, context: &LocalContext<'_>) -> Outcome {
    let Some(db) = parse_int(&args[1]) else {
        return error("ERR value is not an integer or out of range");
    };
    if context.settings.cluster.is_some() && db != 0 {
        return error("ERR SELECT is not allowed in cluster mode");
    }
    match context.facts.databases {
        _ if db < 0 => return error("ERR DB index is out of range"),
        Some(databases) if db >= i64::from(databases) => {
            return error("ERR DB index is out of range")
        }
        // Without the database count only Redis can tell whether the index exists.
        None if db != 0 => return Outcome::NeedsDedicated(None),
        _ => {}
    }
    state.db = db as u32;
    Outcome::Reply(reply::simple("OK"))
}

fn hello(args: &[Vec<u8>], state: &mut ClientState, context: &LocalContext<'_>) -> Outcome {
    let mut protocol = state.protocol;
    if let Some(version) = args.get(1) {
        protocol = match parse_int(version) {
            Some(2) => Protocol::Resp2,
            Some(3) => Protocol::Resp3,
            Some(_) => return error("NOPROTO unsupported protocol version"),
            None => return error("ERR Protocol version is not an integer or out of range"),
        };
    }
    let mut name = None;
    let mut index = 2;
    while index < args.len() {
        let option = String::from_utf8_lossy(&args[index]).to_string();
        let remaining = args.len() - index - 1;
        if option.eq_ignore_ascii_case("auth") && remaining >= 2 {
            let (user, password) = (&args[index + 1], &args[index + 2]);
            match context.listen_password {
                Some(required) => {
                    if !client_credentials_match(user, password, required) {
                        return wrong_password();
                    }
                    state.authenticated = true;
                }
                None if !context.settings.credentials.are(user, password) => {
                    return Outcome::NeedsDedicated(Some(Login {
                        user: user.clone(),
                        password: password.clone(),
                    }))
                }
                None => {}
            }
            index += 3;
        } else if option.eq_ignore_ascii_case("setname") && remaining >= 1 {
            match valid_name(&args[index + 1]) {
                Ok(valid) => name = Some(valid),
                Err(message) => return error(message),
            }
            index += 2;
        } else {
            return error(&format!("ERR Syntax error in HELLO option '{option}'"));
        }
    }
    if !state.authenticated {
        return error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO AUTH <user> <pass> option can be used to authenticate the client and select \
             the RESP protocol version at the same time",
        );
    }
    state.protocol = protocol;
    if let Some(name) = name {
        state.name = name;
    }
    Outcome::Reply(hello_reply(context.facts, state))
}

/// The map Redis answers `HELLO` with, carrying the session's own id and protocol.
fn hello_reply(facts: &ServerFacts, state: &ClientState) -> Bytes {
    let mut writer = ReplyWriter::new(state.protocol)
        .map(7)
        .bulk(b"server")
        .bulk(b"redis")
        .bulk(b"version")
        .bulk(facts.version.as_bytes())
        .bulk(b"proto")
        .integer(i64::from(state.protocol.version()))
        .bulk(b"id")
        .integer(state.id as i64)
        .bulk(b"mode")
        .bulk(facts.mode.as_bytes())
        .bulk(b"role")
        .bulk(facts.role.as_bytes())
        .bulk(b"modules")
        .array(facts.modules.len());
    for (name, version) in &facts.modules {
        writer = writer
            .map(2)
            .bulk(b"name")
            .bulk(name.as_bytes())
            .bulk(b"ver")
            .integer(*version);
    }
    writer.finish()
}

fn auth(args: &[Vec<u8>], state: &mut ClientState, context: &LocalContext<'_>) -> Outcome {
    let (user, password) = match args.len() {
        2 => (&b"default"[..], &args[1]),
        3 => (&args[1][..], &args[2]),
        _ => return error("ERR syntax error"),
    };
    match context.listen_password {
        // keyward requires a password: AUTH is with keyward, which then uses its own
        // credentials upstream.
        Some(required) if client_credentials_match(user, password, required) => {
            state.authenticated = true;
            Outcome::Reply(reply::simple("OK"))
        }
        Some(_) => wrong_password(),
        None if context.settings.credentials.are(user, password) => {
            Outcome::Reply(reply::simple("OK"))
        }
        None => Outcome::NeedsDedicated(Some(Login {
            user: user.to_vec(),
            password: password.to_vec(),
        })),
    }
}

/// Clients authenticate to keyward as Redis's default user, with the listen password.
fn client_credentials_match(user: &[u8], password: &[u8], required: &str) -> bool {
    user == b"default" && secret::same(password, required.as_bytes())
}

fn wrong_password() -> Outcome {
    error("WRONGPASS invalid username-password pair or user is disabled.")
}

fn client_setinfo(args: &[Vec<u8>], state: &mut ClientState) -> Outcome {
    let attribute = String::from_utf8_lossy(&args[2]).to_string();
    let value = &args[3];
    let slot = if attribute.eq_ignore_ascii_case("lib-name") {
        &mut state.lib_name
    } else if attribute.eq_ignore_ascii_case("lib-ver") {
        &mut state.lib_version
    } else {
        return error(&format!("ERR Unrecognized option '{attribute}'"));
    };
    if !resp::is_printable_name(value) {
        return error(&format!(
            "ERR {} cannot contain spaces, newlines or special characters.",
            attribute.to_ascii_lowercase()
        ));
    }
    *slot = (!value.is_empty()).then(|| value.clone());
    Outcome::Reply(reply::simple("OK"))
}

/// Redis allows printable characters without spaces; an empty name clears it.
fn valid_name(name: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    if !resp::is_printable_name(name) {
        return Err("ERR Client names cannot contain spaces, newlines or special characters.");
    }
    Ok((!name.is_empty()).then(|| name.to_vec()))
}
