"""redis-py: pipelines, transactions with WATCH, pub/sub with patterns, Lock under
contention, and protocol=3 (RESP3) replies."""

import os
import sys
import threading
import time

import redis

HOST = os.environ.get("COMPAT_HOST", "127.0.0.1")
PORT = int(os.environ["COMPAT_PORT"])  # set by run.sh; no default that could reach someone's Redis
PREFIX = f"compat:{os.getpid()}:{time.time_ns()}:"


def key(name):
    return PREFIX + name


def main():
    client = redis.Redis(host=HOST, port=PORT, decode_responses=True, socket_timeout=10)
    assert client.ping() is True

    pipe = client.pipeline(transaction=False)
    for _ in range(300):
        pipe.incr(key("counter"))
    assert pipe.execute() == list(range(1, 301))

    assert client.pipeline().set(key("t"), "1").incr(key("t")).get(key("t")).execute() == [True, 2, "2"]

    def double(pipe):
        value = int(pipe.get(key("balance")) or 0)
        pipe.multi()
        pipe.set(key("balance"), value * 2)

    client.set(key("balance"), 21)
    client.transaction(double, key("balance"))
    assert client.get(key("balance")) == "42"

    with client.pipeline() as pipe:
        pipe.watch(key("balance"))
        client.set(key("balance"), 0)
        pipe.multi()
        pipe.set(key("balance"), 100)
        try:
            pipe.execute()
            raise AssertionError("EXEC after a conflicting write must abort")
        except redis.WatchError:
            pass
    assert client.get(key("balance")) == "0"

    pubsub = client.pubsub()
    pubsub.subscribe(key("news"))
    pubsub.psubscribe(key("alerts.*"))
    for _ in range(2):
        assert pubsub.get_message(timeout=5)["type"] in ("subscribe", "psubscribe")
    client.publish(key("news"), "hello")
    client.publish(key("alerts.disk"), "full")
    first = pubsub.get_message(timeout=5)
    second = pubsub.get_message(timeout=5)
    assert (first["type"], first["channel"], first["data"]) == ("message", key("news"), "hello"), first
    assert (second["type"], second["pattern"], second["data"]) == ("pmessage", key("alerts.*"), "full"), second
    pubsub.close()

    shared = {"holders": 0, "max": 0, "count": 0}

    def worker():
        local = redis.Redis(host=HOST, port=PORT, socket_timeout=10)
        for _ in range(10):
            with local.lock(key("lock"), timeout=5, blocking_timeout=20, sleep=0.005):
                shared["holders"] += 1
                shared["max"] = max(shared["max"], shared["holders"])
                value = int(local.get(key("locked-counter")) or 0)
                time.sleep(0.002)
                local.set(key("locked-counter"), value + 1)
                shared["holders"] -= 1
        local.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shared["max"] == 1, "two holders at once"
    assert client.get(key("locked-counter")) == "40"

    resp3 = redis.Redis(host=HOST, port=PORT, protocol=3, decode_responses=True, socket_timeout=10)
    resp3.hset(key("h"), mapping={"a": "1", "b": "2"})
    assert resp3.hgetall(key("h")) == {"a": "1", "b": "2"}
    assert resp3.execute_command("HELLO")["proto"] == 3
    assert resp3.get(key("missing")) is None
    resp3.close()
    client.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # the runner reports any deviation as a failure
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        raise
