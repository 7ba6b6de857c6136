// @upstash/redis over keyward's REST API, as a serverless app uses it with nothing but
// UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN: strings, JSON values, hashes, sorted
// sets, pipelines, multi(), scan, eval/evalsha and scripts that fall back from EVALSHA to EVAL,
// automatic pipelining of concurrent commands, Redis's errors, and subscriptions as
// server-sent events.
import { Redis } from "@upstash/redis";
import { assert, prefix, restUrl, restToken, run, waitFor } from "./common.mjs";

run(async () => {
  const key = (name) => prefix + name;
  // The SDK's defaults: base64 responses, read-your-writes and automatic pipelining.
  const redis = new Redis({ url: restUrl, token: restToken });

  assert.equal(await redis.set(key("s"), "héllo wörld ✓", { ex: 100 }), "OK");
  assert.equal(await redis.get(key("s")), "héllo wörld ✓", "UTF-8 survives base64");
  const ttl = await redis.ttl(key("s"));
  assert.ok(ttl > 90 && ttl <= 100, `ttl ${ttl}`);
  assert.equal(await redis.get(key("missing")), null);
  assert.equal(await redis.incrby(key("n"), 5), 5);
  assert.equal(await redis.incrbyfloat(key("f"), 1.5), 1.5);
  await redis.mset({ [key("a")]: 1, [key("b")]: "two" });
  assert.deepEqual(await redis.mget(key("a"), key("b"), key("missing")), [1, "two", null]);

  const profile = { name: "Ada", langs: ["en", "fr"], age: 36, nested: { ok: true } };
  await redis.set(key("json"), profile);
  assert.deepEqual(await redis.get(key("json")), profile, "JSON values round-trip");

  assert.equal(await redis.hset(key("h"), { field: "value", count: 3, obj: { x: 1 } }), 3);
  assert.deepEqual(await redis.hgetall(key("h")), { field: "value", count: 3, obj: { x: 1 } });
  assert.equal(await redis.hget(key("h"), "field"), "value");
  assert.equal(await redis.hincrby(key("h"), "count", 2), 5);

  await redis.zadd(key("z"), { score: 2, member: "b" }, { score: 1, member: "a" });
  assert.deepEqual(await redis.zrange(key("z"), 0, -1, { withScores: true }), ["a", 1, "b", 2]);
  await redis.rpush(key("l"), "x", "y", "z");
  assert.deepEqual(await redis.lrange(key("l"), 0, -1), ["x", "y", "z"]);

  const pipelined = await redis
    .pipeline()
    .set(key("p"), 1)
    .incr(key("p"))
    .get(key("p"))
    .hgetall(key("h"))
    .exec();
  assert.deepEqual(pipelined, ["OK", 2, 2, { field: "value", count: 5, obj: { x: 1 } }]);
  const withError = await redis
    .pipeline()
    .set(key("e"), "text")
    .lpush(key("e"), "x")
    .get(key("e"))
    .exec({ keepErrors: true });
  assert.equal(withError[0].result, "OK");
  assert.match(withError[1].error, /^WRONGTYPE/);
  assert.equal(withError[2].result, "text");

  const transaction = await redis.multi().set(key("t"), "1").incr(key("t")).get(key("t")).exec();
  assert.deepEqual(transaction, ["OK", 2, 2]);

  const many = Array.from({ length: 40 }, (_, i) => key(`scan:${i}`));
  await Promise.all(many.map((name, i) => redis.set(name, i)));
  const found = new Set();
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, { match: key("scan:*"), count: 7 });
    keys.forEach((name) => found.add(name));
    cursor = String(next);
  } while (cursor !== "0");
  assert.deepEqual([...found].sort(), [...many].sort(), "scan finds every key");

  // Automatic pipelining sends concurrent commands as one /pipeline request.
  const values = await Promise.all(many.map((name) => redis.get(name)));
  assert.deepEqual(values, many.map((_, i) => i));

  const sum = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
  assert.equal(await redis.eval(sum, [key("script")], [10]), 10);
  const sha = await redis.scriptLoad(sum);
  assert.equal(await redis.evalsha(sha, [key("script")], [5]), 15);
  assert.deepEqual(await redis.eval("return {1, 'two', {3}}", [], []), [1, "two", [3]]);
  // A script object tries EVALSHA first and falls back to EVAL on NOSCRIPT.
  await redis.scriptFlush();
  const script = redis.createScript("return ARGV[1] .. ':' .. redis.call('GET', KEYS[1])");
  assert.equal(await script.exec([key("b")], ["got"]), "got:two");
  assert.equal(await script.exec([key("b")], ["again"]), "again:two");

  const channel = key("channel");
  const subscriber = redis.subscribe([channel]);
  const received = [];
  let subscribed = 0;
  subscriber.on("subscribe", (count) => (subscribed = count));
  subscriber.on("message", ({ message }) => received.push(message));
  await waitFor("the subscription", () => subscribed === 1);
  assert.equal(await redis.publish(channel, { greeting: "hi", n: 1 }), 1);
  assert.equal(await redis.publish(channel, "plain text, with commas"), 1);
  await waitFor("both messages", () => received.length === 2);
  assert.deepEqual(received, [{ greeting: "hi", n: 1 }, "plain text, with commas"]);
  await subscriber.unsubscribe();
  await waitFor("the subscription to end", async () => (await redis.publish(channel, "gone")) === 0);

  await assert.rejects(redis.lpush(key("s"), "x"), /WRONGTYPE Operation against a key/);
  await assert.rejects(redis.eval("return redis.call('NOSUCH')", [], []), /Unknown Redis command/);
});
