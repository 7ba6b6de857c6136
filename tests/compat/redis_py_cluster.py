"""redis-py's cluster client (RedisCluster) pointed at keyward in cluster mode. keyward tells
cluster-aware clients that it is a cluster of one node, itself, serving all 16384 slots, so the
client sends everything to keyward and is never redirected; keyward routes each command to the
real cluster's nodes. Keys over many slots, MGET and MSET across slots, a pipeline across
slots, and transactions on hash-tagged keys (with WATCH). Run only in the cluster pass
(COMPAT_CLUSTER=1)."""

import os
import sys
import time

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError, WatchError

HOST = os.environ.get("COMPAT_HOST", "127.0.0.1")
PORT = int(os.environ["COMPAT_PORT"])  # set by run.sh; no default that could reach someone's Redis
PREFIX = f"compat:{os.getpid()}:{time.time_ns()}:"
REDIRECTIONS = (AskError, MovedError, TryAgainError, ClusterDownError)  # MovedError is an AskError

# Every redirection any connection read, whether or not redis-py then followed it silently.
redirections = []


class WatchfulConnection(redis.Connection):
    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except REDIRECTIONS as error:
            redirections.append(f"{type(error).__name__}: {error}")
            raise


def key(name):
    return PREFIX + name


def same_slot(group):
    """Names for keys that one transaction uses together: Redis Cluster wants them in one slot."""
    return lambda name: f"{PREFIX}{{{group}}}{name}"


def main():
    # From a URL, redis-py builds each node's connection pool with this connection class.
    client = RedisCluster.from_url(
        f"redis://{HOST}:{PORT}",
        decode_responses=True,
        socket_timeout=10,
        connection_class=WatchfulConnection,
    )
    nodes = [(node.host, node.port) for node in client.get_nodes()]
    assert nodes == [(HOST, PORT)], f"keyward is the cluster's only node, not {nodes}"
    pool = client.get_default_node().redis_connection.connection_pool
    assert pool.connection_class is WatchfulConnection, "redirections would go unnoticed"
    assert client.ping() is True

    # Keys over many slots, one command each.
    names = [key(f"spread:{i}") for i in range(200)]
    slots = {client.keyslot(name) for name in names}
    assert len(slots) > 150, f"the keys cover {len(slots)} slots"
    for i, name in enumerate(names):
        assert client.set(name, f"value {i}") is True
    assert [client.get(name) for name in names] == [f"value {i}" for i in range(200)]

    # MGET and MSET across slots: redis-py groups the keys by slot and sends every group to
    # the node serving it, which is keyward for all of them.
    assert client.mget_nonatomic(names + [key("missing")]) == [f"value {i}" for i in range(200)] + [None]
    assert client.mset_nonatomic({key(f"m:{i}"): str(i) for i in range(50)}) == [True] * len(
        {client.keyslot(key(f"m:{i}")) for i in range(50)}
    )
    assert client.mget_nonatomic([key(f"m:{i}") for i in range(50)]) == [str(i) for i in range(50)]
    assert client.delete(*names[:50]) == 50
    assert client.exists(*names[:60]) == 10

    # A pipeline across slots.
    pipe = client.pipeline()
    for i in range(100):
        pipe.incrby(key(f"counter:{i}"), i)
    for name in names[50:60]:
        pipe.get(name)
    assert pipe.execute() == list(range(100)) + [f"value {50 + i}" for i in range(10)]

    # Transactions on keys in one slot by their hash tag, as Redis Cluster requires.
    tx = same_slot("cart")
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(tx("items"), "apples", 3).incrby(tx("total"), 3).hincrby(tx("items"), "apples", 2)
        assert pipe.get(tx("total")).execute() == [1, 3, 5, "3"]

    def double(pipe):
        value = int(pipe.get(tx("total")) or 0)
        pipe.multi()
        pipe.set(tx("total"), value * 2)
        pipe.incr(tx("changes"))

    client.transaction(double, tx("total"))
    assert client.get(tx("total")) == "6"

    with client.pipeline(transaction=True) as pipe:
        pipe.watch(tx("total"))
        client.set(tx("total"), 0)
        pipe.multi()
        pipe.set(tx("total"), 100)
        try:
            pipe.execute()
            raise AssertionError("EXEC after a conflicting write must abort")
        except WatchError:
            pass
    assert client.get(tx("total")) == "0"

    # SCAN over every node behind keyward.
    found = set(client.scan_iter(match=key("spread:*"), count=100))
    assert len(found) == 150, f"SCAN finds the keys on every node: {len(found)} of 150"

    assert redirections == [], f"the client was redirected: {redirections}"
    nodes = [(node.host, node.port) for node in client.get_nodes()]
    assert nodes == [(HOST, PORT)], f"the client learned of other nodes than keyward: {nodes}"
    client.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # the runner reports any deviation as a failure
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        raise
