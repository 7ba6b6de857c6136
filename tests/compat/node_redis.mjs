// node-redis (npm `redis`) over RESP3: pipelines, MULTI, pub/sub with patterns, Lua scripts,
// scanIterator, client-side caching with server invalidations, and reconnecting after the
// server restarts.
import { createClient, defineScript } from "redis";
import { assert, cluster, prefix, restartTarget, run, sleep, url, waitFor } from "./common.mjs";

const addTo = defineScript({
  NUMBER_OF_KEYS: 1,
  SCRIPT: "return redis.call('INCRBY', KEYS[1], ARGV[1])",
  parseCommand(parser, key, amount) {
    parser.pushKey(key);
    parser.push(String(amount));
  },
  transformReply(reply) {
    return reply;
  },
});

run(async () => {
  const key = (name) => prefix + name;
  const client = createClient({ url, RESP: 3, scripts: { addTo } });
  client.on("error", () => {});
  await client.connect();

  await client.hSet(key("h"), { field: "value", other: "x" });
  const hash = await client.hGetAll(key("h"));
  assert.deepEqual({ ...hash }, { field: "value", other: "x" }, "RESP3 map reply");

  const pipeline = client.multi();
  for (let i = 0; i < 200; i++) pipeline.incr(key("counter"));
  const counts = await pipeline.execAsPipeline();
  assert.deepEqual(counts, Array.from({ length: 200 }, (_, i) => i + 1));

  const transaction = await client.multi().set(key("t"), "1").incr(key("t")).get(key("t")).exec();
  assert.deepEqual(transaction, ["OK", 2, "2"]);

  const subscriber = client.duplicate();
  subscriber.on("error", () => {});
  await subscriber.connect();
  const received = [];
  await subscriber.subscribe(key("news"), (message, channel) => received.push([channel, message]));
  await subscriber.pSubscribe(key("alerts.*"), (message, channel) => received.push([channel, message]));
  await client.publish(key("news"), "hello");
  await client.publish(key("alerts.disk"), "full");
  await waitFor("two pub/sub messages", () => received.length >= 2);
  assert.deepEqual(received, [[key("news"), "hello"], [key("alerts.disk"), "full"]]);
  if (cluster) {
    // In cluster mode a subscriber's connection reaches one node, and keyward answers a key of
    // another node with -CROSSSLOT (README, "Redis Cluster"): a keyless command shows the same.
    assert.equal(await subscriber.ping(), "PONG", "RESP3 allows commands while subscribed");
  } else {
    assert.equal(await subscriber.get(key("t")), "2", "RESP3 allows commands while subscribed");
  }
  await subscriber.close();

  await client.scriptFlush();
  assert.equal(await client.addTo(key("lua"), 3), 3);
  assert.equal(await client.addTo(key("lua"), 3), 6);

  for (let i = 0; i < 250; i++) await client.set(key(`scan:${i}`), String(i));
  const seen = new Set();
  for await (const keys of client.scanIterator({ MATCH: key("scan:*"), COUNT: 40 })) {
    keys.forEach((k) => seen.add(k));
  }
  assert.equal(seen.size, 250);

  const cached = createClient({
    url,
    RESP: 3,
    clientSideCache: { ttl: 0, maxEntries: 0 },
    socket: { reconnectStrategy: false },
  });
  cached.on("error", () => {});
  if (cluster) {
    // keyward refuses CLIENT TRACKING in cluster mode (README, "Redis Cluster"), and says why,
    // rather than tracking the client's reads on one node of several.
    await assert.rejects(cached.connect(), /CLIENT TRACKING in cluster mode/);
  } else {
    await cached.connect();
    await client.set(key("csc"), "v1");
    assert.equal(await cached.get(key("csc")), "v1");
    assert.equal(await cached.get(key("csc")), "v1", "served from the client's cache");
    await client.set(key("csc"), "v2");
    await waitFor("the invalidation to reach the cached client", async () => (await cached.get(key("csc"))) === "v2");
    await cached.close();
  }

  if (restartTarget()) {
    await sleep(200);
    await waitFor("node-redis to reconnect", async () => {
      try {
        return (await client.set(key("after"), "restart")) === "OK";
      } catch {
        return false;
      }
    }, 20_000);
    assert.equal(await client.get(key("after")), "restart");
  }
  await client.close();
});
