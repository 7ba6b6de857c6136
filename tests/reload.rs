//! Live reload as an SRE does it: edit the file under load, with SIGHUP, with POST /reload.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{http_request, http_request_to, metric_value, network_address, Keyward, RedisServer};

fn config_status(keyward: &Keyward) -> serde_json::Value {
    let (status, body) = keyward.admin_get("/config");
    assert_eq!(status, 200);
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"].clone()
}

/// Writes the file as editors do: a temporary file renamed over the old one.
fn rewrite(keyward: &Keyward, text: &str) {
    let path = keyward.config_path();
    let temporary = path.with_extension("toml.tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How many of `limit + 2` INCRs on a fresh key the rule lets through.
fn allowed_increments(client: &mut redis::Connection, key: &str, tries: usize) -> usize {
    (0..tries)
        .filter(|_| redis::cmd("INCR").arg(key).query::<i64>(client).is_ok())
        .count()
}

fn base_config(keyward: &Keyward, redis_port: u16) -> String {
    format!(
        "[listen]\naddress = \"127.0.0.1:{}\"\n\
         [upstream]\naddress = \"127.0.0.1:{redis_port}\"\nconnect_timeout = \"500ms\"\n\
         [admin]\naddress = \"127.0.0.1:{}\"\n",
        keyward.port, keyward.admin_port
    )
}

#[test]
fn a_hundred_edits_under_load_drop_nothing_and_each_valid_one_takes_effect() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, "");
    let base = base_config(&keyward, redis.port);

    let stop = Arc::new(AtomicBool::new(false));
    let commands = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|worker| {
            let mut client = keyward.client();
            let (stop, commands) = (Arc::clone(&stop), Arc::clone(&commands));
            std::thread::spawn(move || {
                let key = format!("load:{worker}");
                let mut expected = 0;
                while !stop.load(Ordering::Relaxed) {
                    expected += 1;
                    let value: i64 = redis::cmd("INCR")
                        .arg(&key)
                        .query(&mut client)
                        .expect("no failed command");
                    assert_eq!(value, expected, "a command was lost or repeated");
                    commands.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut probe = keyward.client();
    let mut limit_in_force = None;
    for version in 0..100 {
        let before = config_status(&keyward);
        if version % 2 == 0 {
            let limit = version / 2 % 5 + 1;
            rewrite(
                &keyward,
                &format!(
                    "{base}\n[[rate_limit]]\nname = \"probe\"\nkeys = [\"probe:*\"]\nlimit = {limit}\n\
                     period = \"1h\"\n# version {version}\n"
                ),
            );
            wait_until("the valid version to load", || {
                config_status(&keyward)["hash"] != before["hash"]
            });
            limit_in_force = Some(limit);
        } else {
            rewrite(
                &keyward,
                &format!("{base}\n[[rate_limit]]\nname = \"probe\"\nlimit = \"many\"\n"),
            );
            wait_until("the invalid version to be rejected", || {
                config_status(&keyward)["reloads_error"] != before["reloads_error"]
            });
        }
        let limit = limit_in_force.unwrap();
        let allowed = allowed_increments(&mut probe, &format!("probe:{version}"), limit + 2);
        assert_eq!(
            allowed, limit,
            "version {version}: the limit in force is {limit}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.join().expect("a load connection failed or dropped");
    }
    assert!(commands.load(Ordering::Relaxed) > 100, "the load did run");

    let status = config_status(&keyward);
    assert_eq!(status["reloads_ok"], 50);
    assert_eq!(status["reloads_error"], 50);
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{status}"
    );
    let metrics = keyward.admin_get("/metrics").1;
    assert_eq!(
        metric_value(&metrics, "keyward_config_reloads_total", &["result=\"ok\""]),
        50.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "keyward_config_reloads_total",
            &["result=\"error\""]
        ),
        50.0
    );
}

#[test]
fn sighup_and_post_reload_apply_and_restart_only_settings_are_reported() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, "");
    let base = base_config(&keyward, redis.port);
    let watched = config_status(&keyward)["hash"].clone();

    // Written in place; whichever of the watcher and SIGHUP comes first applies it.
    std::fs::write(
        keyward.config_path(),
        format!("{base}\n[[rate_limit]]\nname = \"hup\"\nkeys = [\"h:*\"]\nlimit = 1\nperiod = \"1h\"\n"),
    )
    .unwrap();
    keyward.signal("HUP");
    wait_until("SIGHUP to reload", || {
        config_status(&keyward)["hash"] != watched
    });
    let mut client = keyward.client();
    assert_eq!(allowed_increments(&mut client, "h:1", 3), 1);

    let moved = base.replace(
        &format!("127.0.0.1:{}\"\n[upstream]", keyward.port),
        "127.0.0.1:1\"\n[upstream]",
    );
    std::fs::write(
        keyward.config_path(),
        format!("{moved}\n[log]\nlevel = \"debug\"\n"),
    )
    .unwrap();
    let (status, body) = http_request(keyward.admin_port, "POST", "/reload");
    assert!(status == 200, "{status} {body}");
    wait_until("the reload to show", || {
        config_status(&keyward)["needs_restart"] == serde_json::json!(["listen"])
    });
    assert_eq!(
        allowed_increments(&mut client, "h:2", 3),
        3,
        "the rule was removed"
    );
    let (_, body) = keyward.admin_get("/config");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        report["config"]["listen"]["address"],
        format!("127.0.0.1:{}", keyward.port),
        "still the running address"
    );
    assert_eq!(report["config"]["log"]["level"], "debug");

    let over_resp: String = redis::cmd("KEYWARD")
        .arg("CONFIG")
        .query(&mut client)
        .unwrap();
    let over_resp: serde_json::Value = serde_json::from_str(&over_resp).unwrap();
    assert_eq!(
        over_resp["status"]["needs_restart"],
        serde_json::json!(["listen"])
    );

    std::fs::write(keyward.config_path(), "[upstream]\npool_size = 0\n").unwrap();
    let (status, body) = http_request(keyward.admin_port, "POST", "/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("nonzero"), "{body}");
    let rejected = |keyward: &Keyward| {
        let metrics = keyward.admin_get("/metrics").1;
        let gauge = metric_value(&metrics, "keyward_config_last_reload_successful", &[]);
        (config_status(keyward)["last_reload_failed"].clone(), gauge)
    };
    assert_eq!(rejected(&keyward), (true.into(), 0.0));
    std::fs::write(
        keyward.config_path(),
        format!("{base}\n[log]\nlevel = \"info\"\n"),
    )
    .unwrap();
    let (status, body) = http_request(keyward.admin_port, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(rejected(&keyward), (false.into(), 1.0), "fixed");
    let (status, _) = http_request(keyward.admin_port, "GET", "/reload");
    assert_eq!(status, 405);
}

/// A config file that cannot be read (deleted, or replaced by something that is not a file)
/// is a rejected version like one that does not parse: the version in force stays, and
/// `/config` and the reload metrics say so, for the alert on failed reloads.
#[test]
fn an_unreadable_config_file_is_a_rejected_reload() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, "");
    let text = std::fs::read_to_string(keyward.config_path()).unwrap();
    let errors = |keyward: &Keyward| {
        let metrics = keyward.admin_get("/metrics").1;
        let counted = metric_value(
            &metrics,
            "keyward_config_reloads_total",
            &["result=\"error\""],
        );
        let gauge = metric_value(&metrics, "keyward_config_last_reload_successful", &[]);
        let status = config_status(keyward);
        (status["last_reload_failed"].clone(), counted, gauge)
    };
    assert_eq!(errors(&keyward), (false.into(), 0.0, 1.0));

    std::fs::remove_file(keyward.config_path()).unwrap();
    let (status, body) = http_request(keyward.admin_port, "POST", "/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("cannot read"), "{body}");
    wait_until("the unreadable file to count", || {
        errors(&keyward).0 == true
    });
    let (failed, counted, gauge) = errors(&keyward);
    assert_eq!((failed, gauge), (true.into(), 0.0));
    assert!(counted >= 1.0, "counted {counted}");
    let status = config_status(&keyward);
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("cannot read")),
        "{status}"
    );
    let mut client = keyward.client();
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut client).unwrap(),
        "PONG"
    );

    std::fs::write(keyward.config_path(), text).unwrap();
    let (status, body) = http_request(keyward.admin_port, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    wait_until("the file back to clear the failure", || {
        errors(&keyward).0 == false
    });
    assert_eq!(errors(&keyward).2, 1.0);
}

#[test]
fn reload_from_another_host_needs_the_admin_token() {
    let redis = RedisServer::start();
    let here = network_address();
    // Bound to the network address only, so every request below comes from a non-loopback
    // address, as another host's would.
    let keyward =
        Keyward::start_on_free_ports(&[("KEYWARD_ADMIN_TOKEN", "t0ken")], |port, admin| {
            format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n[upstream]\naddress = \"127.0.0.1:{}\"\n\
             [admin]\naddress = \"{here}:{admin}\"\ntoken_env = \"KEYWARD_ADMIN_TOKEN\"\n",
            redis.port
        )
        });
    let admin = keyward.admin_port;
    let reload =
        |headers: &str| http_request_to(SocketAddr::new(here, admin), "POST", "/reload", headers);
    let (status, body) = reload("");
    assert_eq!(status, 401, "{body}");
    assert_eq!(reload("Authorization: Bearer t0ke\r\n").0, 401);
    let (status, body) = reload("Authorization: Bearer t0ken\r\n");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("unchanged"), "{body}");
}

/// A mounted ConfigMap as the kubelet keeps it: the file is a symlink through `..data`, a
/// symlink to a timestamped directory, and an update writes a new directory and swaps `..data`
/// to it, never touching the file's own name.
struct ConfigMapVolume {
    dir: std::path::PathBuf,
    version: usize,
}

impl ConfigMapVolume {
    /// Turns the directory of keyward's config file into a ConfigMap volume holding `text`.
    fn around(keyward: &Keyward, text: &str) -> ConfigMapVolume {
        let mut volume = ConfigMapVolume {
            dir: keyward.config_path().parent().unwrap().to_path_buf(),
            version: 0,
        };
        volume.update(text);
        let link = volume.dir.join("keyward.toml.link");
        std::os::unix::fs::symlink("..data/keyward.toml", &link).unwrap();
        std::fs::rename(&link, keyward.config_path()).unwrap();
        volume
    }

    /// What the kubelet does when the ConfigMap changes.
    fn update(&mut self, text: &str) {
        self.version += 1;
        let version = format!("..2026_01_01_00_00_0{}.000000001", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("keyward.toml"), text).unwrap();
        let swap = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &swap).unwrap();
        std::fs::rename(&swap, self.dir.join("..data")).unwrap();
        if self.version > 1 {
            let old = format!("..2026_01_01_00_00_0{}.000000001", self.version - 1);
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

/// Kubernetes updates a mounted ConfigMap by swapping a symlink in its directory: keyward
/// notices, applies a valid version, rejects an invalid one (and says so until the file is
/// right again), without a restart.
#[test]
fn a_configmap_update_is_reloaded() {
    let redis = RedisServer::start();
    let keyward = Keyward::start(redis.port, "");
    let base = base_config(&keyward, redis.port);
    let mut volume = ConfigMapVolume::around(&keyward, &base);
    let loaded = config_status(&keyward)["hash"].clone();

    let limited = format!(
        "{base}\n[[rate_limit]]\nname = \"cm\"\nkeys = [\"cm:*\"]\nlimit = 1\nperiod = \"1h\"\n"
    );
    volume.update(&limited);
    wait_until("the new version to apply", || {
        config_status(&keyward)["hash"] != loaded
    });
    let mut client = keyward.client();
    assert_eq!(
        allowed_increments(&mut client, "cm:1", 3),
        1,
        "the rule is in force"
    );

    volume.update(&format!("{limited}limit = \"one\"\n"));
    wait_until("the broken version to be rejected", || {
        config_status(&keyward)["last_reload_failed"] == true
    });
    assert_eq!(
        allowed_increments(&mut client, "cm:2", 3),
        1,
        "the rule stays"
    );
    let metrics = keyward.admin_get("/metrics").1;
    assert_eq!(
        metric_value(&metrics, "keyward_config_last_reload_successful", &[]),
        0.0
    );

    volume.update(&limited);
    wait_until("the file to be right again", || {
        config_status(&keyward)["last_reload_failed"] == false
    });
    assert_eq!(
        config_status(&keyward)["reloads_ok"],
        1,
        "nothing new to apply"
    );
}
