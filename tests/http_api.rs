//! Upstash's REST API as `@upstash/redis` uses it, spoken as raw HTTP to keyward in front of
//! a private Redis: single commands, pipelines, transactions, tokens, base64 results, and the
//! policies that apply to REST requests as to RESP clients.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    free_port, http_exchange, metric_value, redis_calls, wait_for, Keyward, RedisServer,
};

const WEB_TOKEN: &str = "web-s3cret";
const READ_TOKEN: &str = "read-s3cret";

/// Keyward with the REST API on, a read-write token `web` and a read-only one `reports`, and
/// `rules` added to its config.
struct Rest {
    redis: RedisServer,
    keyward: Keyward,
    address: SocketAddr,
}

impl Rest {
    fn start(rules: &str) -> Rest {
        let redis = RedisServer::start();
        let mut port = 0;
        let keyward = Keyward::start_with_ports_of_its_own(
            redis.port,
            "",
            &[
                ("TEST_WEB_TOKEN", WEB_TOKEN),
                ("TEST_READ_TOKEN", READ_TOKEN),
            ],
            || {
                port = free_port();
                format!(
                    "[http_api]\naddress = \"127.0.0.1:{port}\"\n\
                     [[http_api.tokens]]\nname = \"web\"\ntoken_env = \"TEST_WEB_TOKEN\"\n\
                     [[http_api.tokens]]\nname = \"reports\"\ntoken_env = \"TEST_READ_TOKEN\"\n\
                     read_only = true\n\n{rules}"
                )
            },
        );
        Rest {
            redis,
            keyward,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Sends `body` to `path` as the token `token`, with `headers` (CRLF-terminated lines).
    fn send(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String, Value) {
        let (status, head, body) =
            http_exchange(self.address, method, path, headers, body.as_bytes());
        let value = serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {body:?}"));
        (status, head, value)
    }

    fn post_as(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let headers = format!("Authorization: Bearer {token}\r\n");
        let (status, _, value) = self.send("POST", path, &headers, &body.to_string());
        (status, value)
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_as(WEB_TOKEN, path, body)
    }
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

#[test]
fn single_commands_answer_results_and_redis_errors() {
    let rest = Rest::start("");
    assert_eq!(
        rest.post("/", json!(["SET", "k", "v", "EX", 100])),
        (200, json!({"result": "OK"}))
    );
    assert_eq!(
        rest.post("/", json!(["GET", "k"])),
        (200, json!({"result": "v"}))
    );
    let (_, ttl) = rest.post("/", json!(["TTL", "k"]));
    assert!(
        (90..=100).contains(&ttl["result"].as_i64().unwrap()),
        "{ttl}"
    );
    assert_eq!(
        rest.post("/", json!(["GET", "missing"])),
        (200, json!({"result": null}))
    );
    assert_eq!(
        rest.post("/", json!(["HSET", "h", "f", "x", "g", 2])),
        (200, json!({"result": 2}))
    );
    assert_eq!(
        rest.post("/", json!(["HGETALL", "h"])),
        (200, json!({"result": ["f", "x", "g", "2"]}))
    );
    assert_eq!(
        rest.post("/", json!(["LPUSH", "k", "x"])),
        (400, json!({"error": WRONGTYPE}))
    );
    assert_eq!(
        rest.post("/", json!(["NOSUCH", "a"])),
        (
            400,
            json!({"error": "ERR unknown command 'NOSUCH', with args beginning with: 'a' "})
        )
    );
    for (body, why) in [
        ("not json", "not JSON"),
        ("[]", "no command"),
        ("[\"GET\", null]", "a null word"),
        ("{\"command\": \"GET\"}", "not an array"),
    ] {
        let (status, _, error) = rest.send(
            "POST",
            "/",
            &format!("Authorization: Bearer {WEB_TOKEN}\r\n"),
            body,
        );
        assert_eq!(status, 400, "{why}");
        assert!(
            error["error"].as_str().unwrap().starts_with("ERR "),
            "{why}: {error}"
        );
    }
}

#[test]
fn base64_encodes_every_string_however_deep() {
    let rest = Rest::start("");
    let base64 = |body: Value| {
        let headers = format!("Authorization: Bearer {WEB_TOKEN}\r\nUpstash-Encoding: base64\r\n");
        let (status, _, value) = rest.send("POST", "/", &headers, &body.to_string());
        (status, value)
    };
    assert_eq!(
        base64(json!(["SET", "k", "héllo"])),
        (200, json!({"result": "OK"}))
    );
    assert_eq!(
        base64(json!(["GET", "k"])),
        (200, json!({"result": "aMOpbGxv"}))
    );
    assert_eq!(
        base64(json!(["PING"])),
        (200, json!({"result": "UE9ORw=="}))
    );
    assert_eq!(base64(json!(["STRLEN", "k"])), (200, json!({"result": 6})));
    assert_eq!(
        base64(json!(["GET", "nothing"])),
        (200, json!({"result": null}))
    );
    let script = "return {'a', {1, 'b', {'c'}}, false, redis.status_reply('OK')}";
    assert_eq!(
        base64(json!(["EVAL", script, 0])),
        (
            200,
            json!({"result": ["YQ==", [1, "Yg==", ["Yw=="]], null, "T0s="]})
        )
    );
    assert_eq!(
        base64(json!(["LPUSH", "k", "x"])),
        (400, json!({"error": WRONGTYPE})),
        "errors are never encoded"
    );
}

#[test]
fn a_pipeline_answers_each_command_in_order_errors_included() {
    let rest = Rest::start("");
    let (status, results) = rest.post(
        "/pipeline",
        json!([
            ["SET", "p", 1],
            ["LPUSH", "p", "x"],
            ["INCR", "p"],
            ["GET", "p"]
        ]),
    );
    assert_eq!(status, 200);
    assert_eq!(
        results,
        json!([{"result": "OK"}, {"error": WRONGTYPE}, {"result": 2}, {"result": "2"}])
    );
    let many: Vec<Value> = (0..500).map(|_| json!(["INCR", "counter"])).collect();
    let (status, results) = rest.post("/pipeline", Value::Array(many));
    assert_eq!(status, 200);
    let counts: Vec<i64> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["result"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, (1..=500).collect::<Vec<_>>());
}

#[test]
fn multi_exec_runs_one_transaction() {
    let rest = Rest::start("");
    let (status, results) = rest.post(
        "/multi-exec",
        json!([
            ["SET", "t", 1],
            ["INCR", "t"],
            ["LPUSH", "t", "x"],
            ["GET", "t"]
        ]),
    );
    assert_eq!(status, 200);
    assert_eq!(
        results,
        json!([{"result": "OK"}, {"result": 2}, {"error": WRONGTYPE}, {"result": "2"}])
    );
    // An error while queueing discards the whole transaction, as Redis does.
    assert_eq!(
        rest.post("/multi-exec", json!([["SET", "t", 10], ["NOSUCH"]])),
        (
            400,
            json!({"error": "EXECABORT Transaction discarded because of previous errors."})
        )
    );
    assert_eq!(
        rest.post("/", json!(["GET", "t"])),
        (200, json!({"result": "2"}))
    );
}

#[test]
fn concurrent_transactions_do_not_interleave() {
    let rest = Rest::start("");
    let transactions = 25;
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..transactions {
                    let (status, results) = rest.post(
                        "/multi-exec",
                        json!([["INCR", "c"], ["INCR", "c"], ["GET", "c"]]),
                    );
                    assert_eq!(status, 200, "{results}");
                    let first = results[0]["result"].as_i64().unwrap();
                    assert_eq!(results[1]["result"], json!(first + 1), "{results}");
                    assert_eq!(results[2]["result"], json!((first + 1).to_string()));
                }
            });
        }
    });
    assert_eq!(
        rest.post("/", json!(["GET", "c"])),
        (200, json!({"result": (8 * transactions * 2).to_string()}))
    );
}

#[test]
fn requests_need_a_token_and_the_right_method() {
    let rest = Rest::start("");
    let body = json!(["PING"]).to_string();
    let unauthorized = json!({"error": "Unauthorized"});
    for headers in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: web-s3cret\r\n",
    ] {
        let (status, _, answer) = rest.send("POST", "/", headers, &body);
        assert_eq!((status, answer), (401, unauthorized.clone()), "{headers:?}");
    }
    let (status, _, answer) = rest.send("POST", "/?_token=web-s3cret", "", &body);
    assert_eq!((status, answer), (200, json!({"result": "PONG"})));
    let auth = format!("Authorization: Bearer {WEB_TOKEN}\r\n");
    for (method, path) in [
        ("GET", "/"),
        ("PUT", "/pipeline"),
        ("DELETE", "/multi-exec"),
    ] {
        let (status, _, answer) = rest.send(method, path, &auth, &body);
        assert_eq!(status, 405, "{method} {path}: {answer}");
    }
    let (status, head, _) = rest.send("POST", "/", &auth, &body);
    assert_eq!(status, 200);
    assert!(
        head.to_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
}

#[test]
fn read_only_tokens_refuse_writes_and_scans() {
    let rest = Rest::start("");
    rest.post("/", json!(["SET", "k", "before"]));
    let read = |path: &str, body: Value| rest.post_as(READ_TOKEN, path, body);
    assert_eq!(
        read("/", json!(["GET", "k"])),
        (200, json!({"result": "before"}))
    );
    let refused = |name: &str| json!({"error": format!("NOPERM this user has no permissions to run the '{name}' command")});
    assert_eq!(
        read("/", json!(["SET", "k", "after"])),
        (400, refused("set"))
    );
    assert_eq!(read("/", json!(["KEYS", "*"])), (400, refused("keys")));
    assert_eq!(read("/", json!(["SCAN", 0])), (400, refused("scan")));
    assert_eq!(
        read("/", json!(["EVAL", "return 1", 0])),
        (400, refused("eval"))
    );
    assert_eq!(
        read(
            "/pipeline",
            json!([["GET", "k"], ["DEL", "k"], ["STRLEN", "k"]])
        ),
        (
            200,
            json!([{"result": "before"}, refused("del"), {"result": 6}])
        )
    );
    assert_eq!(
        read("/multi-exec", json!([["GET", "k"], ["SET", "k", "after"]])),
        (400, refused("set"))
    );
    assert_eq!(
        rest.post("/", json!(["GET", "k"])),
        (200, json!({"result": "before"}))
    );
}

#[test]
fn commands_that_would_not_answer_once_are_refused() {
    let rest = Rest::start("");
    for (words, name) in [
        (json!(["SUBSCRIBE", "c"]), "subscribe"),
        (json!(["MONITOR"]), "monitor"),
        (json!(["CLIENT", "SETNAME", "other"]), "client|setname"),
        (json!(["HELLO", 3]), "hello"),
    ] {
        assert_eq!(
            rest.post("/", words),
            (
                400,
                json!({"error": format!("ERR '{name}' is not supported over the REST API")})
            )
        );
    }
    assert_eq!(
        rest.post("/", json!(["CLIENT", "GETNAME"])),
        (200, json!({"result": "web"})),
        "the session is named after the token"
    );
}

#[test]
fn requests_are_counted_by_token_and_status_and_by_command() {
    let rest = Rest::start("");
    for _ in 0..3 {
        rest.post("/", json!(["GET", "k"]));
    }
    rest.post("/pipeline", json!([["GET", "k"], ["GET", "k"]]));
    rest.post("/", json!(["LPUSH"]));
    rest.post_as("wrong", "/", json!(["GET", "k"]));
    let (_, metrics) = rest.keyward.admin_get("/metrics");
    let requests = |labels: &[&str]| metric_value(&metrics, "keyward_http_requests_total", labels);
    assert_eq!(
        requests(&["token=\"web\"", "status=\"200\""]),
        4.0,
        "{metrics}"
    );
    assert_eq!(requests(&["token=\"web\"", "status=\"400\""]), 1.0);
    assert_eq!(requests(&["token=\"\"", "status=\"401\""]), 1.0);
    assert_eq!(
        metric_value(&metrics, "keyward_commands_total", &["command=\"get\""]),
        5.0
    );
}

#[test]
fn a_cache_rule_answers_rest_reads_without_redis() {
    let rest = Rest::start(
        "[[cache]]\nname = \"profiles\"\nkeys = [\"profile:*\"]\nttl = \"1m\"\nmax_memory = \"1MB\"\n",
    );
    wait_for(
        Duration::from_secs(5),
        "the cache's invalidations are up",
        || {
            redis::cmd("KEYWARD")
                .arg(&["CACHE", "STATS"])
                .query::<String>(&mut rest.keyward.client())
                .is_ok_and(|stats| stats.contains("invalidations:up"))
        },
    );
    rest.post("/", json!(["SET", "profile:1", "ada"]));
    assert_eq!(
        rest.post("/", json!(["GET", "profile:1"])),
        (200, json!({"result": "ada"}))
    );
    let calls = redis_calls(&rest.redis, "get");
    for _ in 0..5 {
        assert_eq!(
            rest.post("/", json!(["GET", "profile:1"])),
            (200, json!({"result": "ada"}))
        );
    }
    assert_eq!(
        redis_calls(&rest.redis, "get"),
        calls,
        "served from the cache"
    );
    rest.post("/", json!(["SET", "profile:1", "grace"]));
    assert_eq!(
        rest.post("/", json!(["GET", "profile:1"])),
        (200, json!({"result": "grace"})),
        "a write through REST invalidates"
    );
}

#[test]
fn client_rate_limits_count_per_token() {
    let rest = Rest::start(
        "[[rate_limit]]\nname = \"per-app\"\ncommands = [\"GET\"]\nlimit = 2\n\
         period = \"1m\"\nbucket = \"client\"\n",
    );
    for _ in 0..2 {
        assert_eq!(rest.post("/", json!(["GET", "a"])).0, 200);
    }
    let (status, answer) = rest.post("/", json!(["GET", "b"]));
    assert_eq!(status, 400);
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.starts_with("RATELIMITED per-app name:web "),
        "{error}"
    );
    assert_eq!(
        rest.post_as(READ_TOKEN, "/", json!(["GET", "a"])).0,
        200,
        "another token has a bucket of its own"
    );
}

#[test]
fn commands_in_the_path_answer_as_posted_ones() {
    let rest = Rest::start("");
    let auth = format!("Authorization: Bearer {WEB_TOKEN}\r\n");
    let get = |path: &str| {
        let (status, _, answer) = rest.send("GET", path, &auth, "");
        (status, answer)
    };
    assert_eq!(get("/set/foo/bar/EX/100"), (200, json!({"result": "OK"})));
    assert_eq!(get("/get/foo"), (200, json!({"result": "bar"})));
    assert_eq!(get("/incr/n"), (200, json!({"result": 1})));
    assert_eq!(get("/get/missing"), (200, json!({"result": null})));
    let (status, _, answer) = rest.send("POST", "/set/a%20key", &auth, "a value / with\nlines");
    assert_eq!((status, answer), (200, json!({"result": "OK"})));
    assert_eq!(
        get("/get/a%20key"),
        (200, json!({"result": "a value / with\nlines"}))
    );
    assert_eq!(get("/lpush/foo/x"), (400, json!({"error": WRONGTYPE})));
    let (status, _, answer) = rest.send("GET", "/get/foo?_token=web-s3cret", "", "");
    assert_eq!((status, answer), (200, json!({"result": "bar"})));
    let (status, _, _) = rest.send("DELETE", "/del/foo", &auth, "");
    assert_eq!(status, 405);
    assert_eq!(
        rest.post_as(READ_TOKEN, "/", json!(["GET", "foo"])),
        (200, json!({"result": "bar"}))
    );
    let (status, _, answer) = rest.send(
        "GET",
        "/del/foo",
        &format!("Authorization: Bearer {READ_TOKEN}\r\n"),
        "",
    );
    assert_eq!(
        status, 400,
        "read-only tokens are read-only in the path form too"
    );
    assert_eq!(
        answer,
        json!({"error": "NOPERM this user has no permissions to run the 'del' command"})
    );
}

#[test]
fn the_sync_token_is_answered() {
    let rest = Rest::start("");
    let sync_token = |head: &str| {
        head.lines().find_map(|line| {
            line.to_lowercase()
                .strip_prefix("upstash-sync-token: ")
                .map(str::to_string)
        })
    };
    let auth = format!("Authorization: Bearer {WEB_TOKEN}\r\n");
    let (_, head, _) = rest.send("POST", "/", &auth, r#"["PING"]"#);
    assert_eq!(sync_token(&head).as_deref(), Some("0"));
    let (_, head, _) = rest.send(
        "POST",
        "/pipeline",
        &format!("{auth}upstash-sync-token: abc123\r\n"),
        r#"[["SET","k","v"]]"#,
    );
    assert_eq!(sync_token(&head).as_deref(), Some("abc123"));
}

#[test]
fn upstash_lua_dialect_runs_and_its_sha_is_found() {
    let rest = Rest::start("");
    let script = "#!lua flags=allow-key-locking\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])";
    let sha = |text: &str| -> String {
        use sha1::Digest;
        sha1::Sha1::digest(text.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    };
    let noscript = json!({"error": "NOSCRIPT No matching script. Please use EVAL."});
    // Before the script was ever sent, its SHA is unknown, as it would be to Redis.
    assert_eq!(
        rest.post("/", json!(["EVALSHA", sha(script), 1, "n", 1])),
        (400, noscript.clone())
    );
    assert_eq!(
        rest.post("/", json!(["EVAL", script, 1, "n", 5])),
        (200, json!({"result": 5}))
    );
    assert_eq!(
        rest.post(
            "/pipeline",
            json!([["EVALSHA", sha(script), 1, "n", 2], ["GET", "n"]])
        ),
        (200, json!([{"result": 7}, {"result": "7"}]))
    );
    let known: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(sha(script))
        .arg(sha("#!lua\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"))
        .query(&mut rest.redis.client())
        .unwrap();
    assert_eq!(
        known,
        [0, 1],
        "Redis holds the script without Upstash's flag"
    );
    // Once Redis forgot it, the client is told as Redis tells it, and sends it again.
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut rest.redis.client())
        .unwrap();
    assert_eq!(
        rest.post("/", json!(["EVALSHA", sha(script), 1, "n", 1])),
        (400, noscript)
    );
    assert_eq!(
        rest.post("/", json!(["EVAL", "#!lua flags=made-up\nreturn 1", 0])),
        (
            400,
            json!({"error": "ERR Unexpected flag in script shebang: made-up"})
        ),
        "flags Upstash does not have either are Redis's to refuse"
    );
}

/// Reads from `stream` until what was read contains `needle`; returns all of it.
fn read_until(stream: &mut std::net::TcpStream, read: &mut String, needle: &str) {
    use std::io::Read;
    let mut chunk = [0u8; 4096];
    while !read.contains(needle) {
        let count = stream.read(&mut chunk).expect("the stream goes on");
        assert!(count > 0, "the stream ended before {needle:?}: {read}");
        read.push_str(&String::from_utf8_lossy(&chunk[..count]));
    }
}

#[test]
fn subscribers_get_messages_as_server_sent_events_until_they_leave() {
    use std::io::Write;
    let rest = Rest::start("");
    let subscribe = |method: &str, path: &str| {
        let mut stream = std::net::TcpStream::connect(rest.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\
             Authorization: Bearer {WEB_TOKEN}\r\nContent-Length: 2\r\n\r\n[]"
        )
        .unwrap();
        stream
    };
    let publish = |channel: &str, message: &str| -> i64 {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query(&mut rest.redis.client())
            .unwrap()
    };
    let mut channel = subscribe("GET", "/subscribe/news");
    let mut read = String::new();
    read_until(&mut channel, &mut read, "data: subscribe,news,1\n\n");
    assert!(read.starts_with("HTTP/1.1 200 "), "{read}");
    assert!(
        read.to_lowercase()
            .contains("content-type: text/event-stream"),
        "{read}"
    );
    let mut pattern = subscribe("POST", "/psubscribe/n*");
    let mut pattern_read = String::new();
    read_until(&mut pattern, &mut pattern_read, "data: psubscribe,n*,1\n\n");
    assert_eq!(publish("news", "hello, world"), 2);
    read_until(
        &mut channel,
        &mut read,
        "data: message,news,hello, world\n\n",
    );
    read_until(
        &mut pattern,
        &mut pattern_read,
        "data: pmessage,n*,news,hello, world\n\n",
    );
    // A client that goes away ends its subscription in Redis.
    drop(channel);
    support::wait_until_unsubscribed(&rest.redis, "news", "the subscriber left");
    assert_eq!(
        publish("news", "again"),
        1,
        "the pattern subscriber is still there"
    );
    read_until(
        &mut pattern,
        &mut pattern_read,
        "data: pmessage,n*,news,again\n\n",
    );
    drop(pattern);
    support::wait_for(
        Duration::from_secs(5),
        "the pattern subscriber left",
        || publish("news", "gone") == 0,
    );
    // A subscription a deny rule refuses is an error, not a stream.
    let denied = Rest::start("[[deny]]\nname = \"no-pubsub\"\ncommands = [\"SUBSCRIBE\"]\n");
    let auth = format!("Authorization: Bearer {WEB_TOKEN}\r\n");
    let (status, _, answer) = denied.send("GET", "/subscribe/news", &auth, "");
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().starts_with("NOPERM"),
        "{answer}"
    );
}

#[test]
fn rest_sessions_count_towards_max_clients() {
    let redis = RedisServer::start();
    let mut rest_port = 0;
    let keyward = Keyward::start_on_free_ports(&[("TEST_WEB_TOKEN", WEB_TOKEN)], |port, admin| {
        rest_port = free_port();
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\nmax_clients = 1\n\
             [upstream]\naddress = \"127.0.0.1:{}\"\n\
             [admin]\naddress = \"127.0.0.1:{admin}\"\n\
             [http_api]\naddress = \"127.0.0.1:{rest_port}\"\n\
             [[http_api.tokens]]\nname = \"web\"\ntoken_env = \"TEST_WEB_TOKEN\"\n",
            redis.port
        )
    });
    let address = SocketAddr::from(([127, 0, 0, 1], rest_port));
    let ping = || {
        let auth = format!("Authorization: Bearer {WEB_TOKEN}\r\n");
        let (status, _, body) = http_exchange(address, "POST", "/", &auth, br#"["PING"]"#);
        (status, body)
    };
    assert_eq!(ping(), (200, r#"{"result":"PONG"}"#.to_string()));
    // The REST request's session ends just after its answer, in a task of its own.
    wait_for(Duration::from_secs(5), "the REST session is gone", || {
        let (_, metrics) = keyward.admin_get("/metrics");
        metric_value(&metrics, "keyward_client_connections", &[]) == 0.0
    });
    let mut resp_client = keyward.raw();
    resp_client.send(b"PING\r\n");
    assert_eq!(resp_client.read_line(), "+PONG\r\n");
    assert_eq!(
        ping(),
        (
            503,
            r#"{"error":"ERR max number of clients reached"}"#.to_string()
        )
    );
    drop(resp_client);
    wait_for(Duration::from_secs(5), "the RESP client is gone", || {
        ping().0 == 200
    });
}

#[test]
fn a_slow_or_oversized_body_holds_no_session() {
    use std::io::{Read, Write};
    let rest = Rest::start("");
    let sessions = || {
        let (_, metrics) = rest.keyward.admin_get("/metrics");
        metric_value(&metrics, "keyward_client_connections", &[])
    };
    // Half a body, and the client goes quiet: no session until the rest arrives.
    let mut slow = std::net::TcpStream::connect(rest.address).unwrap();
    write!(
        slow,
        "POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {WEB_TOKEN}\r\n\
         Content-Length: 16\r\n\r\n[\"PI"
    )
    .unwrap();
    assert_eq!(
        rest.post("/", json!(["PING"])),
        (200, json!({"result": "PONG"}))
    );
    // The PING's session ends once it is answered; the slow request's would stay.
    wait_for(Duration::from_secs(5), "no session is open", || {
        sessions() == 0.0
    });
    slow.write_all(b"NG\"]        ").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 512];
    let read = slow.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.ends_with(r#"{"result":"PONG"}"#), "{answer}");
    // A body declared over the request size limit is refused before it is sent.
    let mut large = std::net::TcpStream::connect(rest.address).unwrap();
    write!(
        large,
        "POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {WEB_TOKEN}\r\n\
         Content-Length: 2000000000\r\n\r\n"
    )
    .unwrap();
    large
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 512];
    let read = large.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("request size limit"), "{answer}");
}
