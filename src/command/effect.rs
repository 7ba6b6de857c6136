//! How a command affects the connection it runs on, which decides where a session may send it.

use super::flags;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Leaves no state on the connection and gets exactly one reply: safe on a shared one.
    Stateless,
    /// Answered by the session itself from its own state, so nothing leaks between clients.
    Local(LocalCommand),
    /// Leaves state on the connection (a transaction, watched keys, a blocked wait, tracking,
    /// another user); replies still match commands one to one.
    Dedicated,
    /// Blocks only when the `BLOCK` option is present (`XREAD`, `XREADGROUP`).
    DedicatedWithBlockOption,
    /// Must reach Redis at once, even while the session's shared connection waits behind a
    /// busy script or a paused write (`SCRIPT KILL`, `FUNCTION KILL`, `SHUTDOWN`,
    /// `CLIENT UNPAUSE`): sent on a connection of its own for that one command.
    Aside,
    /// Turns the connection into a stream whose frames no longer match commands one to one
    /// (pub/sub in RESP2, `MONITOR`, `CLIENT REPLY`, replication).
    Streaming,
    /// Describes the cluster or a client's part in it (`CLUSTER SLOTS`, `READONLY`): in cluster
    /// mode keyward answers as a cluster of one node, itself, serving every slot; else Redis
    /// answers, on a connection of the session's own when the command leaves state there.
    ClusterView { leaves_state: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCommand {
    Select,
    Hello,
    Auth,
    Reset,
    Quit,
    ClientSetName,
    ClientGetName,
    ClientSetInfo,
    ClientId,
    Keyward,
    /// `SYNC`, `PSYNC`, `REPLCONF`: keyward does not proxy replication, and says so.
    Replication,
    /// A [`Effect::ClusterView`] command in cluster mode.
    Cluster,
    /// `MULTI` in cluster mode, on the session's shared connection: its own connection goes to
    /// the node of the transaction's first key, so it is opened with the next command.
    DeferredMulti,
}

pub(super) fn effect_of(name: &str, command_flags: u32) -> Effect {
    match name {
        "select" => Effect::Local(LocalCommand::Select),
        "hello" => Effect::Local(LocalCommand::Hello),
        "auth" => Effect::Local(LocalCommand::Auth),
        "reset" => Effect::Local(LocalCommand::Reset),
        "quit" => Effect::Local(LocalCommand::Quit),
        "client|setname" => Effect::Local(LocalCommand::ClientSetName),
        "client|getname" => Effect::Local(LocalCommand::ClientGetName),
        "client|setinfo" => Effect::Local(LocalCommand::ClientSetInfo),
        "client|id" => Effect::Local(LocalCommand::ClientId),
        "keyward" => Effect::Local(LocalCommand::Keyward),
        "sync" | "psync" | "replconf" => Effect::Local(LocalCommand::Replication),
        "script|kill" | "function|kill" | "shutdown" | "client|unpause" => Effect::Aside,
        "xread" | "xreadgroup" => Effect::DedicatedWithBlockOption,
        "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe"
        | "sunsubscribe" | "monitor" | "client|reply"
        // The Lua debugger takes over the connection's protocol.
        | "script|debug" => {
            Effect::Streaming
        }
        "cluster|slots" | "cluster|shards" | "cluster|nodes" | "cluster|info" | "cluster|myid" => {
            Effect::ClusterView {
                leaves_state: false,
            }
        }
        "readonly" | "readwrite" | "asking" => Effect::ClusterView { leaves_state: true },
        "multi" | "watch" | "wait" | "waitaof" | "client|tracking" | "client|caching"
        | "client|no-evict" | "client|no-touch" => Effect::Dedicated,
        _ if command_flags & flags::BLOCKING != 0 => Effect::Dedicated,
        _ => Effect::Stateless,
    }
}

/// What a session must notice about a command beyond its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Nothing,
    /// Names another client by id, or its reply does (`CLIENT KILL`, `CLIENT UNBLOCK`,
    /// `CLIENT TRACKING`, `CLIENT GETREDIR`, `CLIENT TRACKINGINFO`), which keyward translates:
    /// clients know keyward's ids, not Redis's.
    NamesClients,
    /// `CLIENT PAUSE`: from now on Redis holds some commands until the pause ends.
    Pause,
    /// `CLIENT UNPAUSE`: the pause ends.
    Unpause,
}

pub(super) fn notice_of(name: &str) -> Notice {
    match name {
        "client|kill"
        | "client|unblock"
        | "client|tracking"
        | "client|getredir"
        | "client|trackinginfo" => Notice::NamesClients,
        "client|pause" => Notice::Pause,
        "client|unpause" => Notice::Unpause,
        _ => Notice::Nothing,
    }
}

/// When Redis may hold the command for long on a shared connection, so that other clients'
/// commands queued behind it would wait with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Only while `CLIENT PAUSE … ALL` pauses everything.
    InFullPause,
    /// While `CLIENT PAUSE` pauses writes: writes, and what Redis 7 pauses with them (scripts,
    /// `PUBLISH`, `PFCOUNT`).
    InWritePause,
    /// Always: a script runs as long as it runs.
    Always,
}

pub(super) fn holding_of(name: &str, command_flags: u32) -> Holding {
    match name {
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => Holding::Always,
        "publish" | "spublish" | "pfcount" => Holding::InWritePause,
        _ if command_flags & flags::WRITE != 0 => Holding::InWritePause,
        _ => Holding::InFullPause,
    }
}

/// Commands that a phase of the request pipeline treats apart, resolved once with the table
/// instead of by name for every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Other,
    /// `MULTI`: a transaction starts on the session's connection.
    StartsTransaction,
    /// `EXEC`, `DISCARD`, `RESET`: the transaction ends.
    EndsTransaction,
    /// `MONITOR`: its connection is opened once Redis no longer shows keyward's handshakes.
    Monitor,
    /// `WAIT`: waits in Redis for replicas, though Redis does not flag it blocking.
    WaitsForReplicas,
    /// `SET`: a lock attempt when it is `SET … NX` on a key a lock rule covers.
    Set,
    /// `FLUSHALL`, `FLUSHDB`, `SWAPDB`: any key of a database may change.
    ChangesEveryKey,
    /// `WATCH`: keys are watched until the transaction ends or `UNWATCH`.
    Watches,
    /// `UNWATCH`.
    Unwatches,
    /// `CLIENT TRACKING`: Redis tells the connection of changes to the keys it reads.
    Tracking,
}

pub(super) fn role_of(name: &str) -> Role {
    match name {
        "multi" => Role::StartsTransaction,
        "exec" | "discard" | "reset" => Role::EndsTransaction,
        "monitor" => Role::Monitor,
        "wait" => Role::WaitsForReplicas,
        "set" => Role::Set,
        "flushall" | "flushdb" | "swapdb" => Role::ChangesEveryKey,
        "watch" => Role::Watches,
        "unwatch" => Role::Unwatches,
        "client|tracking" => Role::Tracking,
        _ => Role::Other,
    }
}
