//! The admin endpoint as Prometheus and Kubernetes use it.

mod support;

use std::time::Duration;

use support::{metric_value, redis_and_keyward, wait_for};

#[test]
fn metrics_move_with_traffic() {
    let (_redis, keyward) = redis_and_keyward();
    let mut client = keyward.client();
    for _ in 0..25 {
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(&mut client)
            .unwrap();
    }
    let _: Option<String> = redis::cmd("GET").arg("k").query(&mut client).unwrap();
    // Answered by keyward itself: counted, never timed.
    let () = redis::cmd("SELECT").arg(0).query(&mut client).unwrap();
    let mut raw = keyward.raw();
    raw.send(b"*1\r\n$-9\r\n");
    assert_eq!(
        raw.read_line(),
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    assert!(raw.is_closed());

    let (status, metrics) = keyward.admin_get("/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric_value(&metrics, "keyward_commands_total", &["command=\"set\""]),
        25.0
    );
    assert_eq!(
        metric_value(&metrics, "keyward_commands_total", &["command=\"get\""]),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "keyward_command_duration_seconds_count",
            &["command=\"set\""]
        ),
        25.0
    );
    assert!(metric_value(&metrics, "keyward_client_connections", &[]) >= 1.0);
    assert!(metric_value(&metrics, "keyward_upstream_connections", &[]) >= 1.0);
    assert!(
        metrics.contains("# TYPE keyward_command_duration_seconds histogram"),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "keyward_commands_total", &["command=\"select\""]),
        1.0
    );
    assert!(
        !metrics.contains("keyward_command_duration_seconds_count{command=\"select\"}"),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "keyward_protocol_errors_total", &[]),
        1.0
    );

    for _ in 0..5 {
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(&mut client)
            .unwrap();
    }
    let (_, metrics) = keyward.admin_get("/metrics");
    assert_eq!(
        metric_value(&metrics, "keyward_commands_total", &["command=\"set\""]),
        30.0
    );
}

#[test]
fn health_and_readiness() {
    let (mut redis, keyward) = redis_and_keyward();
    assert_eq!(keyward.admin_get("/healthz"), (200, "ok\n".into()));
    // keyward listens before its pool has connected (a readiness probe is there for that).
    support::wait_for(
        std::time::Duration::from_secs(5),
        "keyward ready while Redis is up",
        || keyward.admin_get("/readyz").0 == 200,
    );
    redis.kill();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while keyward.admin_get("/readyz").0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "still ready without Redis"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        keyward.admin_get("/healthz").0,
        200,
        "alive even when Redis is not"
    );
    assert_eq!(keyward.admin_get("/nope").0, 404);
    assert_eq!(
        support::http_request(keyward.admin_port, "POST", "/metrics").0,
        405
    );
}

/// The file's identity in `/config` is its SHA-256, as `sha256sum` prints it, so an SRE can
/// tell which file is in force from the file alone, whatever build of keyward runs it.
#[test]
fn config_identity_is_the_sha256_of_the_file() {
    let (_redis, keyward) = redis_and_keyward();
    let (status, body) = keyward.admin_get("/config");
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let output = std::process::Command::new("sha256sum")
        .arg(keyward.config_path())
        .output()
        .expect("sha256sum runs");
    let sha256sum = String::from_utf8(output.stdout).unwrap();
    let digest = sha256sum.split_whitespace().next().unwrap();
    assert_eq!(digest.len(), 64, "{sha256sum}");
    assert_eq!(report["status"]["hash"], digest, "{body}");
}

/// Alert rules compare a counter with its value minutes ago: the counters they watch exist at
/// zero from the start, and the states they judge (Redis up, config rejected, clients against
/// their limit) are series of their own.
#[test]
fn series_that_alerts_watch_exist_from_the_start() {
    let (mut redis, keyward) = redis_and_keyward();
    // Its first connection to Redis opens just after it starts listening.
    wait_for(Duration::from_secs(5), "keyward ready", || {
        keyward.admin_get("/readyz").0 == 200
    });
    let (_, metrics) = keyward.admin_get("/metrics");
    for (name, labels) in [
        ("keyward_upstream_errors_total", &["kind=\"connect\""][..]),
        ("keyward_upstream_errors_total", &["kind=\"timeout\""]),
        ("keyward_config_reloads_total", &["result=\"error\""]),
        ("keyward_cache_invalidation_connection_lost_total", &[]),
        ("keyward_output_limit_disconnects_total", &[]),
        ("keyward_rejected_clients_total", &[]),
    ] {
        let series = format!(
            "{name}{}",
            labels.first().map_or(String::new(), |l| format!("{{{l}}}"))
        );
        assert!(
            metrics.contains(&format!("{series} 0\n")),
            "{series} at zero in:\n{metrics}"
        );
    }
    assert_eq!(metric_value(&metrics, "keyward_max_clients", &[]), 10000.0);
    assert_eq!(metric_value(&metrics, "keyward_upstream_up", &[]), 1.0);
    assert_eq!(
        metric_value(&metrics, "keyward_config_last_reload_successful", &[]),
        1.0
    );
    let loaded_at = metric_value(&metrics, "keyward_config_loaded_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - loaded_at).abs() < 60.0, "{loaded_at} vs {now}");

    redis.kill();
    support::wait_for(
        std::time::Duration::from_secs(5),
        "Redis is seen down",
        || {
            let (_, metrics) = keyward.admin_get("/metrics");
            metric_value(&metrics, "keyward_upstream_up", &[]) == 0.0
        },
    );
}

/// Lists come a page at a time, saying whether more follow; a page that is not a number is
/// refused with the reason, never answered with a default.
#[test]
fn lists_come_a_page_at_a_time() {
    let redis = support::RedisServer::start();
    let keyward = support::Keyward::start(
        redis.port,
        "[hotkeys]\nenabled = true\nwindows = [\"1m\"]\n",
    );
    let mut client = keyward.client();
    for (index, key) in ["k:a", "k:b", "k:c", "k:d", "k:e"].iter().enumerate() {
        for _ in 0..(10 - index) {
            let _: Option<String> = redis::cmd("GET").arg(key).query(&mut client).unwrap();
        }
    }
    let page = |query: &str| -> serde_json::Value {
        let (status, body) = keyward.admin_get(&format!("/hotkeys?{query}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let keys = |report: &serde_json::Value| -> Vec<String> {
        report["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["key"].as_str().unwrap().to_string())
            .collect()
    };
    let first = page("limit=2");
    assert_eq!(keys(&first), ["k:a", "k:b"]);
    assert_eq!(first["more_keys"], true);
    let last = page("offset=4&limit=2");
    assert_eq!(keys(&last), ["k:e"]);
    assert_eq!(last["more_keys"], false);
    assert_eq!(last["offset"], 4);

    for path in [
        "/hotkeys?limit=ten",
        "/bigkeys?offset=-1",
        "/locks?limit=1.5",
    ] {
        let (status, body) = keyward.admin_get(path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("must be a whole number"), "{path}: {body}");
    }
    let (status, body) = keyward.admin_get("/locks?limit=5");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"more\": false"), "{body}");
}
