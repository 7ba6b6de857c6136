// ioredis: pipelines, MULTI, pub/sub with patterns, Lua through defineCommand (EVALSHA with
// the NOSCRIPT fallback), scanStream, and reconnecting after the server restarts.
import { Redis } from "ioredis";
import { assert, host, port, prefix, restartTarget, run, sameSlot, waitFor } from "./common.mjs";

run(async () => {
  const redis = new Redis({ host, port, maxRetriesPerRequest: 20 });
  const key = (name) => prefix + name;

  assert.equal(await redis.set(key("a"), "1"), "OK");
  assert.equal(await redis.get(key("a")), "1");

  const pipeline = redis.pipeline();
  for (let i = 0; i < 500; i++) pipeline.incr(key("counter"));
  const results = await pipeline.exec();
  assert.deepEqual(results.map(([error, value]) => value), Array.from({ length: 500 }, (_, i) => i + 1));

  // Two keys in one transaction: a Redis Cluster wants them in one slot.
  const tx = sameSlot("tx");
  const exec = await redis.multi().set(tx("m"), "x").incr(tx("n")).get(tx("m")).exec();
  assert.deepEqual(exec, [[null, "OK"], [null, 1], [null, "x"]]);

  const subscriber = redis.duplicate();
  const received = [];
  subscriber.on("message", (channel, message) => received.push(["message", channel, message]));
  subscriber.on("pmessage", (pattern, channel, message) => received.push(["pmessage", pattern, channel, message]));
  await subscriber.subscribe(key("news"));
  await subscriber.psubscribe(key("alerts.*"));
  assert.equal(await redis.publish(key("news"), "hello"), 1);
  assert.equal(await redis.publish(key("alerts.disk"), "full"), 1);
  await waitFor("two pub/sub messages", () => received.length >= 2);
  assert.deepEqual(received, [
    ["message", key("news"), "hello"],
    ["pmessage", key("alerts.*"), key("alerts.disk"), "full"],
  ]);
  await subscriber.unsubscribe(key("news"));
  await subscriber.punsubscribe(key("alerts.*"));
  assert.equal(await subscriber.ping(), "PONG", "a client that left subscribe mode runs commands again");
  subscriber.disconnect();

  await redis.script("FLUSH");
  redis.defineCommand("addTo", { numberOfKeys: 1, lua: "return redis.call('INCRBY', KEYS[1], ARGV[1])" });
  assert.equal(await redis.addTo(key("lua"), 5), 5, "EVAL after NOSCRIPT");
  assert.equal(await redis.addTo(key("lua"), 5), 10, "EVALSHA");

  const many = redis.pipeline();
  for (let i = 0; i < 300; i++) many.set(key(`scan:${i}`), i);
  await many.exec();
  const seen = new Set();
  await new Promise((resolve, reject) => {
    const stream = redis.scanStream({ match: key("scan:*"), count: 50 });
    stream.on("data", (keys) => keys.forEach((k) => seen.add(k)));
    stream.on("end", resolve);
    stream.on("error", reject);
  });
  assert.equal(seen.size, 300);

  if (restartTarget()) {
    await waitFor("ioredis to reconnect", async () => {
      try {
        return (await redis.set(key("after"), "restart")) === "OK";
      } catch {
        return false;
      }
    }, 20_000);
    assert.equal(await redis.get(key("after")), "restart");
  }
  redis.disconnect();
});
