//! The redirections a cluster node answers with, read.

use crate::config::HostPort;

/// What a node's error reply asks of keyward.
pub(super) enum Redirect {
    Moved { slot: u16, address: HostPort },
    Ask { slot: u16, address: HostPort },
    TryAgain,
}

impl Redirect {
    /// Reads `-MOVED slot host:port`, `-ASK slot host:port` or `-TRYAGAIN …`; a node that
    /// does not know its own endpoint leaves the host out (`:port`): it is the host of the
    /// node that answered.
    pub(super) fn read(frame: &[u8], answered: &HostPort) -> Option<Redirect> {
        let line = std::str::from_utf8(frame.strip_prefix(b"-")?)
            .ok()?
            .trim_end();
        let mut words = line.split(' ');
        let kind = words.next()?;
        if kind == "TRYAGAIN" {
            return Some(Redirect::TryAgain);
        }
        let slot: u16 = words.next()?.parse().ok()?;
        let (host, port) = words.next()?.rsplit_once(':')?;
        let host = match host.trim_start_matches('[').trim_end_matches(']') {
            "" => answered.host(),
            host => host,
        };
        let address = HostPort::new(host, port.parse().ok()?);
        match kind {
            "MOVED" => Some(Redirect::Moved { slot, address }),
            "ASK" => Some(Redirect::Ask { slot, address }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_name_their_node() {
        let answered = HostPort::new("10.0.0.9", 7000);
        let Some(Redirect::Moved { slot, address }) =
            Redirect::read(b"-MOVED 3999 127.0.0.1:6381\r\n", &answered)
        else {
            panic!("a MOVED");
        };
        assert_eq!((slot, address), (3999, HostPort::new("127.0.0.1", 6381)));
        let Some(Redirect::Ask { address, .. }) = Redirect::read(b"-ASK 1 :6382\r\n", &answered)
        else {
            panic!("an ASK");
        };
        assert_eq!(
            address,
            HostPort::new("10.0.0.9", 6382),
            "the host that answered"
        );
        assert!(matches!(
            Redirect::read(
                b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
                &answered
            ),
            Some(Redirect::TryAgain)
        ));
        assert!(Redirect::read(b"-ERR MOVED 1 a:1\r\n", &answered).is_none());
    }
}
