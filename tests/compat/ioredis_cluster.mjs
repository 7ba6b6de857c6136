// ioredis's cluster client (Redis.Cluster) pointed at keyward in cluster mode. keyward tells
// cluster-aware clients that it is a cluster of one node, itself, serving all 16384 slots, so
// the client sends everything to keyward and is never redirected; keyward routes each command
// to the real cluster's nodes. Keys over many slots, MGET and a pipeline across slots (which a
// Redis Cluster node would refuse or redirect), and a transaction on hash-tagged keys.
// Run only in the cluster pass (COMPAT_CLUSTER=1).
import { Redis } from "ioredis";
import { assert, host, port, prefix, run, sameSlot } from "./common.mjs";

const REDIRECTION = /^(MOVED|ASK|TRYAGAIN|CLUSTERDOWN)\b/;

run(async () => {
  const key = (name) => prefix + name;
  const cluster = new Redis.Cluster([{ host, port }], { redisOptions: { maxRetriesPerRequest: 20 } });
  // ioredis follows redirections silently: every error reply a command or a pipeline gets goes
  // through handleError, so note the redirections there, and every node it connects to.
  const redirections = [];
  let errorReplies = 0;
  const handleError = cluster.handleError.bind(cluster);
  cluster.handleError = (error, ...rest) => {
    errorReplies += 1;
    if (REDIRECTION.test(error.message)) redirections.push(error.message);
    return handleError(error, ...rest);
  };
  const nodesSeen = new Set();
  cluster.on("+node", (node) => nodesSeen.add(`${node.options.host}:${node.options.port}`));
  await new Promise((resolve, reject) => {
    cluster.once("ready", resolve);
    cluster.once("error", reject);
  });

  const masters = cluster.nodes("master").map((node) => `${node.options.host}:${node.options.port}`);
  assert.deepEqual(masters, [`${host}:${port}`], "keyward is the cluster's only node");
  const slots = await cluster.cluster("SLOTS");
  assert.deepEqual(slots.map(([first, last, [ip, nodePort]]) => [first, last, ip, nodePort]), [[0, 16383, host, port]]);

  // Keys over many slots, one command each.
  const names = Array.from({ length: 200 }, (_, i) => key(`spread:${i}`));
  const slotsUsed = new Set(await Promise.all(names.map((name) => cluster.cluster("KEYSLOT", name))));
  assert.ok(slotsUsed.size > 150, `the keys cover ${slotsUsed.size} slots`);
  await Promise.all(names.map((name, i) => cluster.set(name, `value ${i}`)));
  assert.deepEqual(
    await Promise.all(names.map((name) => cluster.get(name))),
    names.map((_, i) => `value ${i}`),
  );

  // One MGET over every one of those slots, answered in the order of its keys.
  const withMissing = [...names, key("missing")];
  assert.deepEqual(await cluster.mget(withMissing), [...names.map((_, i) => `value ${i}`), null]);
  assert.equal(await cluster.del(names.slice(0, 50)), 50);
  assert.equal(await cluster.exists(names.slice(0, 60)), 10);

  // A pipeline across slots: ioredis sends it whole to the one node serving them all. (ioredis
  // itself refuses a pipelined command whose own keys are in several slots.)
  const pipeline = cluster.pipeline();
  for (let i = 0; i < 100; i++) pipeline.incrby(key(`counter:${i}`), i);
  for (const name of names.slice(50, 60)) pipeline.get(name);
  const results = await pipeline.exec();
  assert.ok(results.every(([error]) => error === null), JSON.stringify(results.find(([error]) => error)));
  assert.deepEqual(results.map(([, value]) => value), [
    ...Array.from({ length: 100 }, (_, i) => i),
    ...Array.from({ length: 10 }, (_, i) => `value ${50 + i}`),
  ]);

  // A transaction on keys in one slot by their hash tag, as Redis Cluster requires.
  const tx = sameSlot("cart");
  const exec = await cluster
    .multi()
    .hset(tx("items"), "apples", 3)
    .incrby(tx("total"), 3)
    .hincrby(tx("items"), "apples", 2)
    .get(tx("total"))
    .exec();
  assert.deepEqual(exec, [[null, 1], [null, 3], [null, 5], [null, "3"]]);

  // EVAL with its keys in one slot, and SCAN over every node behind keyward.
  const script = "return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('INCRBY', KEYS[2], ARGV[1])";
  assert.equal(await cluster.eval(script, 2, tx("a"), tx("b"), 2), 4);
  const seen = new Set();
  let cursor = "0";
  do {
    const [next, keys] = await cluster.scan(cursor, "MATCH", key("spread:*"), "COUNT", 100);
    keys.forEach((name) => seen.add(name));
    cursor = next;
  } while (cursor !== "0");
  assert.equal(seen.size, 150, "SCAN finds the keys on every node");

  // That the watch above sees error replies at all.
  await assert.rejects(cluster.lpush(names[50], "x"), /^ReplyError: WRONGTYPE/);
  assert.ok(errorReplies > 0, "error replies go unnoticed");
  assert.deepEqual(redirections, [], "the client was redirected");
  assert.deepEqual([...nodesSeen], [`${host}:${port}`], "the client connected to another node than keyward");
  cluster.disconnect();
});
