//! Hot keys and big keys through a running keyward: known frequencies and sizes in, the same
//! out of `/hotkeys`, `/bigkeys`, `KEYWARD HOTKEYS`, `KEYWARD BIGKEYS` and `/metrics`.

mod support;

use support::{http_get, Keyward, RedisServer};

const HOTKEYS: &str =
    "[hotkeys]\nenabled = true\ncapacity = 64\nwindows = [\"10s\", \"1m\"]\nexport_top = 3\nbig_key_bytes = \"1KB\"\n";

fn drive(keyward: &Keyward) {
    let mut client = keyward.client();
    let mut pipe = redis::pipe();
    for _ in 0..50 {
        pipe.cmd("GET").arg("hot:a").ignore();
    }
    for _ in 0..30 {
        pipe.cmd("SET").arg("hot:b").arg("v").ignore();
    }
    for user in 1..=20 {
        pipe.cmd("GET").arg(format!("user:{user}:profile")).ignore();
    }
    pipe.cmd("MGET").arg(&["cold:1", "cold:2"]).ignore();
    let () = pipe.query(&mut client).unwrap();
}

/// Sends `times` copies of one command in a single pipeline.
fn pipeline_of(keyward: &Keyward, times: usize, command: &[&str]) {
    let mut pipe = redis::pipe();
    for _ in 0..times {
        pipe.cmd(command[0]).arg(&command[1..]).ignore();
    }
    let () = pipe.query(&mut keyward.client()).unwrap();
}

/// A JSON page of the admin endpoint, which must answer 200.
fn admin_json(keyward: &Keyward, path: &str) -> serde_json::Value {
    let (status, body) = http_get(keyward.admin_port, path);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn reports_known_frequencies_everywhere() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    drive(&keyward);

    let report = admin_json(&keyward, "/hotkeys?window=10s&limit=3");
    assert_eq!(report["window"], "10s");
    assert_eq!(
        (&report["by"], &report["total"]),
        (&"requests".into(), &102.into())
    );
    let keys = report["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0]["key"], "hot:a");
    assert_eq!(
        (keys[0]["count"].as_u64(), keys[0]["reads"].as_u64()),
        (Some(50), Some(50))
    );
    assert_eq!(keys[1]["key"], "hot:b");
    assert_eq!(
        (keys[1]["count"].as_u64(), keys[1]["writes"].as_u64()),
        (Some(30), Some(30))
    );
    assert_eq!(keys[0]["error"], 0, "under capacity, counts are exact");
    let patterns = report["patterns"].as_array().unwrap();
    assert!(
        patterns
            .iter()
            .any(|p| p["key"] == "user:*:profile" && p["count"] == 20),
        "{patterns:?}"
    );

    let text: String = redis::cmd("KEYWARD")
        .arg(&["HOTKEYS", "WINDOW", "1m", "COUNT", "2"])
        .query(&mut keyward.client())
        .unwrap();
    assert!(
        text.contains("key:hot:a requests=50 error=0 reads=50 writes=0"),
        "{text}"
    );
    assert!(text.contains("key:hot:b requests=30"), "{text}");
    assert!(
        !text.contains("key:cold:1"),
        "COUNT 2 lists two keys: {text}"
    );

    let metrics = keyward.admin_get("/metrics").1;
    assert!(
        metrics.contains("keyward_hotkey_requests{window=\"10s\",key=\"hot:a\"} 50"),
        "{metrics}"
    );
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("keyward_hotkey_requests{window=\"1m\""))
        .count();
    assert_eq!(series, 3, "only export_top keys per window are exported");
}

/// Sizes on the wire of what the commands below send and get, worked out by hand.
mod wire {
    pub const VALUE: usize = 5000;
    /// `SET big:1 <value>`: `*3`, `$3 SET`, `$5 big:1`, `$5000 <value>`.
    pub const SET_IN: u64 = 4 + 9 + 11 + 7 + VALUE as u64 + 2;
    pub const SET_OUT: u64 = 5;
    /// `GET big:1` and its bulk reply.
    pub const GET_IN: u64 = 4 + 9 + 11;
    pub const GET_OUT: u64 = 7 + VALUE as u64 + 2;
    /// `MGET small:1 big:1` (38 bytes): each key gets itself plus half of the other 26.
    pub const MGET_IN: u64 = 5 + 13;
}

#[test]
fn counts_bytes_each_way_and_lists_big_keys() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    let mut client = keyward.client();
    let value = "x".repeat(wire::VALUE);
    let () = redis::cmd("SET")
        .arg("big:1")
        .arg(&value)
        .query(&mut client)
        .unwrap();
    for _ in 0..3 {
        let read: String = redis::cmd("GET").arg("big:1").query(&mut client).unwrap();
        assert_eq!(read.len(), wire::VALUE);
    }
    let both: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["small:1", "big:1"])
        .query(&mut client)
        .unwrap();
    assert_eq!(
        (both[0].is_none(), both[1].as_ref().map(String::len)),
        (true, Some(wire::VALUE))
    );

    let report = admin_json(&keyward, "/hotkeys?window=1m&by=bytes&limit=2");
    assert_eq!(report["by"], "bytes");
    let top = &report["keys"][0];
    assert_eq!(top["key"], "big:1");
    let inbound = wire::SET_IN + 3 * wire::GET_IN + wire::MGET_IN;
    let outbound = wire::SET_OUT + 4 * wire::GET_OUT;
    assert_eq!(top["bytes_in"].as_u64(), Some(inbound), "{top}");
    assert_eq!(top["bytes_out"].as_u64(), Some(outbound), "{top}");
    assert_eq!(top["count"].as_u64(), Some(inbound + outbound));
    assert_eq!(top["writes"].as_u64(), Some(wire::SET_IN + wire::SET_OUT));
    // The MGET's nil element (5 bytes) is small:1's.
    let small = &report["keys"][1];
    assert_eq!(
        (&small["key"], small["bytes_out"].as_u64()),
        (&"small:1".into(), Some(5))
    );

    let text: String = redis::cmd("KEYWARD")
        .arg(&["HOTKEYS", "BY", "bytes", "COUNT", "1"])
        .query(&mut keyward.client())
        .unwrap();
    let line = format!(
        "key:big:1 bytes={} error=0 reads={} writes={} in={inbound} out={outbound}",
        inbound + outbound,
        inbound + outbound - wire::SET_IN - wire::SET_OUT,
        wire::SET_IN + wire::SET_OUT
    );
    assert!(text.contains(&line), "{line} in {text}");

    let big = admin_json(&keyward, "/bigkeys");
    assert_eq!(big["threshold_bytes"], 1000);
    let seen: Vec<(String, String, u64, u64)> = big["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["key"], "big:1", "{big}");
            (
                k["command"].as_str().unwrap().to_string(),
                k["side"].as_str().unwrap().to_string(),
                k["bytes"].as_u64().unwrap(),
                k["times"].as_u64().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("get", "reply", wire::GET_OUT, 3),
        ("mget", "reply", wire::GET_OUT, 1),
        ("set", "value", wire::VALUE as u64, 1),
    ] {
        let expected = (expected.0.into(), expected.1.into(), expected.2, expected.3);
        assert!(seen.contains(&expected), "{expected:?} in {seen:?}");
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    let text: String = redis::cmd("KEYWARD")
        .arg(&["BIGKEYS", "COUNT", "1"])
        .query(&mut keyward.client())
        .unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("key:big:1 command="), "{text}");

    let metrics = keyward.admin_get("/metrics").1;
    for series in [
        "keyward_big_keys_total{side=\"reply\"} 4".to_string(),
        "keyward_big_keys_total{side=\"value\"} 1".to_string(),
        format!(
            "keyward_hotkey_bytes{{window=\"1m\",key=\"big:1\"}} {}",
            inbound + outbound
        ),
    ] {
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

#[test]
fn refuses_what_it_cannot_answer() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    assert_eq!(http_get(keyward.admin_port, "/hotkeys?by=weight").0, 400);
    assert_eq!(http_get(keyward.admin_port, "/hotkeys?window=5m").0, 400);
    let error = redis::cmd("KEYWARD")
        .arg(&["HOTKEYS", "COUNT"])
        .query::<String>(&mut keyward.client())
        .unwrap_err();
    assert!(error.to_string().contains("syntax error"), "{error}");
    let plain = Keyward::start(redis.port, "");
    let (status, body) = http_get(plain.admin_port, "/hotkeys");
    assert_eq!(status, 400);
    assert!(body.contains("disabled"), "{body}");
}

#[test]
fn a_request_held_by_a_rate_limit_counts_once() {
    let redis = RedisServer::start();
    let limit =
        "[[rate_limit]]\nname = \"slow\"\nkeys = [\"slow:*\"]\nlimit = 5\nperiod = \"1s\"\n\
                 action = \"delay\"\nmax_delay = \"5s\"\n";
    let keyward = Keyward::start(redis.port, &format!("{HOTKEYS}{limit}"));
    // Five pass at once; the other five wait for the bucket, and are judged again and again.
    pipeline_of(&keyward, 10, &["INCR", "slow:n"]);
    let report = admin_json(&keyward, "/hotkeys?window=10s");
    assert_eq!(report["keys"][0]["key"], "slow:n");
    assert_eq!(report["keys"][0]["count"], 10, "{report}");
}

/// An unpipelined request's reply goes straight from Redis's connection to the client: the
/// request still counts, with its reply, by the time the client has the answer, whether the
/// client speaks again or not. Keys kept in full and keys cut short alike.
#[test]
fn unpipelined_requests_count_before_their_answers_arrive() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    let long = format!("long:{}", "x".repeat(100));
    let longest = format!("longest:{}", "y".repeat(300));
    let mut client = keyward.client();
    let () = redis::cmd("SET")
        .arg(&long)
        .arg("value")
        .query(&mut client)
        .unwrap();
    for round in 1..=3u64 {
        for key in [&long, &longest] {
            let _: Option<String> = redis::cmd("GET").arg(key).query(&mut client).unwrap();
        }
        let report = admin_json(&keyward, "/hotkeys?window=10s&by=bytes");
        let keys = report["keys"].as_array().unwrap();
        let counted = |prefix: &str| {
            let entry = keys
                .iter()
                .find(|entry| entry["key"].as_str().unwrap().starts_with(prefix));
            entry.map(|entry| (entry["reads"].as_u64(), entry["bytes_out"].as_u64()))
        };
        // `$5 value` (11 bytes) and `$-1` (5 bytes) per GET, and `+OK` for the SET.
        let get_long = 4 + 9 + 6 + long.len() as u64 + 2;
        assert_eq!(
            counted(&long),
            Some((Some(round * (get_long + 11)), Some(5 + round * 11))),
            "{report}"
        );
        assert_eq!(
            counted("longest:").map(|(_, out)| out),
            Some(Some(round * 5)),
            "{report}"
        );
    }
}

/// A pipeline's replies go straight from Redis's connection to the client too, and its
/// commands count with their own replies: those the client's socket takes at once, and those
/// that wait in keyward while the client reads nothing (the socket is full); commands without
/// keys among them count for nothing, and an `MGET`'s elements go to their keys.
#[test]
fn pipelined_requests_count_with_their_own_replies_however_they_reach_the_client() {
    const VALUE: usize = 100_000;
    const ROUNDS: u64 = 100;
    let redis = RedisServer::start();
    // Counters enough that the stage's sketch takes none of these 200 commands with keys (300
    // keys in all): it takes nothing of a stage's first 2 x 1,024 commands, so the bytes of
    // each key are counted exactly.
    let keyward = Keyward::start(
        redis.port,
        &HOTKEYS.replace("capacity = 64", "capacity = 1024"),
    );
    let value = "v".repeat(VALUE);
    let () = redis::cmd("SET")
        .arg("pipelined:big")
        .arg(&value)
        .query(&mut redis.client())
        .unwrap();
    let mut client = keyward.raw();
    let get = b"*2\r\n$3\r\nGET\r\n$13\r\npipelined:big\r\n";
    let ping = b"*1\r\n$4\r\nPING\r\n";
    let mget = b"*3\r\n$4\r\nMGET\r\n$15\r\npipelined:small\r\n$13\r\npipelined:big\r\n";
    let pipeline: Vec<u8> = (0..ROUNDS)
        .flat_map(|_| [&get[..], &ping[..], &mget[..]].concat())
        .collect();
    client.send(&pipeline);
    // 20 MB of replies: far more than the socket holds until the client reads.
    std::thread::sleep(std::time::Duration::from_millis(500));
    for _ in 0..ROUNDS {
        assert_eq!(client.read_bulk().map(|read| read.len()), Ok(VALUE));
        assert_eq!(client.read_line(), "+PONG\r\n");
        assert_eq!(client.read_line(), "*2\r\n");
        assert_eq!(client.read_bulk(), Err("$-1\r\n".to_string()));
        assert_eq!(client.read_bulk().map(|read| read.len()), Ok(VALUE));
    }
    let report = admin_json(&keyward, "/hotkeys?window=10s&by=bytes");
    let counted = |key: &str| {
        let entries = report["keys"].as_array().unwrap();
        let entry = entries.iter().find(|entry| entry["key"] == key).unwrap();
        (entry["reads"].as_u64(), entry["bytes_out"].as_u64())
    };
    let bulk = (format!("${VALUE}\r\n").len() + VALUE + 2) as u64;
    let get_in = get.len() as u64;
    // Each of the MGET's keys gets itself and half the rest of the request.
    let mget_shared = (mget.len() - 15 - 13) as u64 / 2;
    assert_eq!(
        counted("pipelined:big"),
        (
            Some(ROUNDS * (get_in + bulk + 13 + mget_shared + bulk)),
            Some(ROUNDS * 2 * bulk)
        ),
        "{report}"
    );
    assert_eq!(
        counted("pipelined:small"),
        (Some(ROUNDS * (15 + mget_shared + 5)), Some(ROUNDS * 5)),
        "{report}"
    );
    let requests = admin_json(&keyward, "/hotkeys?window=10s");
    assert_eq!(requests["total"], 3 * ROUNDS, "{requests}");
}

/// A pipeline whose connection fails before its replies counts at once, without them, though
/// its client sends nothing more.
#[test]
fn a_pipeline_whose_connection_fails_counts_at_once() {
    let mut redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    let mut client = keyward.raw();
    client.send(b"*1\r\n$4\r\nPING\r\n");
    assert_eq!(client.read_line(), "+PONG\r\n");
    redis.signal("STOP");
    client.send(b"*2\r\n$3\r\nGET\r\n$6\r\nfail:a\r\n*2\r\n$3\r\nGET\r\n$6\r\nfail:b\r\n");
    std::thread::sleep(std::time::Duration::from_millis(300));
    redis.kill();
    for _ in 0..2 {
        let line = client.read_line();
        assert!(line.starts_with('-'), "{line}");
    }
    let report = admin_json(&keyward, "/hotkeys?window=10s&by=bytes");
    let mut counted: Vec<(String, u64)> = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let key = entry["key"].as_str().unwrap().to_string();
            (key, entry["bytes_out"].as_u64().unwrap())
        })
        .collect();
    counted.sort();
    let expected = [("fail:a".to_string(), 0), ("fail:b".to_string(), 0)];
    assert_eq!(counted, expected, "{report}");
}

#[test]
fn sampling_scales_counts_back_up() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(
        redis.port,
        &HOTKEYS.replace("export_top = 3", "export_top = 3\nsample_rate = 0.5"),
    );
    pipeline_of(&keyward, 1000, &["GET", "sampled"]);
    let report = admin_json(&keyward, "/hotkeys?window=1m");
    assert_eq!(report["keys"][0]["key"], "sampled");
    let estimate = report["keys"][0]["count"].as_u64().unwrap();
    assert!(
        (800..=1200).contains(&estimate),
        "about half of 1000 sampled, scaled by 2: {estimate}"
    );
}

#[test]
fn keyward_top_shows_the_hottest_keys() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    drive(&keyward);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["top", "--once", "--window", "1m", "--count", "3"])
        .arg("--admin")
        .arg(format!("127.0.0.1:{}", keyward.admin_port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("last 1m - 102 requests"), "{text}");
    // The key's line comes first; its pattern (the same text) follows under PATTERN.
    let line = text.lines().find(|line| line.ends_with("hot:a")).unwrap();
    assert!(
        line.split_whitespace().eq(["50", "0", "50", "0", "hot:a"]),
        "{text}"
    );
    assert!(text.contains("user:*:profile"), "{text}");
}

/// Query parameters are percent-decoded, as browsers, `curl --data-urlencode` and HTTP
/// libraries send them: an encoded request gets the answer of the plain one.
#[test]
fn percent_encoded_parameters_mean_what_they_encode() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    drive(&keyward);
    let plain = admin_json(&keyward, "/hotkeys?window=1m&by=bytes&limit=2");
    assert_eq!(plain["keys"].as_array().map(Vec::len), Some(2), "{plain}");
    let encoded = admin_json(&keyward, "/hotkeys?window=1%6D&%62y=byte%73&limit=%32");
    assert_eq!(encoded, plain);
}

#[test]
fn keyward_top_says_what_went_wrong() {
    let top = |admin: &str, window: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(["top", "--once", "--admin", admin, "--window", window])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let nobody = format!("127.0.0.1:{}", support::free_port());
    let (code, stderr) = top(&nobody, "1m");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("keyward top: cannot reach {nobody}: ")),
        "{stderr}"
    );

    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, HOTKEYS);
    let admin = format!("127.0.0.1:{}", keyward.admin_port);
    let (code, stderr) = top(&admin, "7m");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("keyward top: {admin} answered 400: window")),
        "{stderr}"
    );
}
