//! Accepting client connections and running keyward until it is told to stop.
//!
//! Shutdown is a cancellation token: the accept loop stops, sessions stop reading and finish
//! what is in flight, and the process waits for them up to the grace period.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::context::Context;
use crate::session::{ClientGuard, Session};
use crate::tls::{self, ServerTls};

/// Accepts clients until shutdown; sessions are spawned on `sessions` so they can be awaited.
pub async fn accept_clients(
    listener: TcpListener,
    context: Arc<Context>,
    max_clients: usize,
    tls: Option<Arc<ServerTls>>,
    sessions: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = context.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: wait for some to be released.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(guard) = ClientGuard::admit(&context, max_clients) else {
            // Over TLS the refusal would cost a handshake per refused client, just when there
            // are too many: the connection is closed without one.
            if tls.is_none() {
                tokio::spawn(refuse(stream));
            }
            continue;
        };
        let tls = tls.clone();
        let context = Arc::clone(&context);
        let relays = sessions.clone();
        sessions.spawn(async move {
            let _guard = guard;
            if let Some(stream) = tls::accept_client(stream, tls.as_deref(), peer, &relays).await {
                Session::new(context, peer).run(stream).await;
            }
        });
    }
}

/// Tells a client over the limit why, as Redis does, and closes.
async fn refuse(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = stream.shutdown().await;
}
