// @upstash/ratelimit over keyward's REST API: its scripts are written in Upstash's Lua dialect
// (`#!lua flags=allow-key-locking`), which keyward translates for Redis. Sliding window, token
// bucket and fixed window limits count right, per identifier, and a plain node handler
// answers 429 once a caller is past its limit.
import http from "node:http";
import { Ratelimit } from "@upstash/ratelimit";
import { Redis } from "@upstash/redis";
import { assert, cluster, prefix, restToken, restUrl, run } from "./common.mjs";

run(async () => {
  const redis = new Redis({ url: restUrl, token: restToken });
  // A sliding window's script takes the current and the previous window's keys: on a Redis
  // Cluster they must be in one slot, so there the limiter's prefix is a hash tag.
  const limiter = (name, algorithm) =>
    new Ratelimit({
      redis,
      limiter: algorithm,
      prefix: cluster ? `${prefix}{${name}}` : `${prefix}${name}`,
      ephemeralCache: false,
    });
  const successes = async (ratelimit, identifier, times) => {
    const outcomes = [];
    for (let i = 0; i < times; i++) outcomes.push((await ratelimit.limit(identifier)).success);
    return outcomes;
  };

  // Windows of an hour: a run whose calls straddle two windows (or a token bucket's refill)
  // would see a success more than the counts below, with 30 s windows about one run in a
  // hundred.
  const sliding = limiter("sliding", Ratelimit.slidingWindow(5, "1 h"));
  assert.deepEqual(await successes(sliding, "alice", 7), [true, true, true, true, true, false, false]);
  assert.deepEqual(await successes(sliding, "bob", 2), [true, true], "each identifier has its own window");
  assert.equal((await sliding.getRemaining("bob")).remaining, 3);

  const bucket = limiter("bucket", Ratelimit.tokenBucket(1, "1 h", 3));
  assert.deepEqual(await successes(bucket, "alice", 4), [true, true, true, false]);

  const fixed = limiter("fixed", Ratelimit.fixedWindow(2, "1 h"));
  const third = await fixed.limit("alice").then(() => fixed.limit("alice")).then(() => fixed.limit("alice"));
  assert.equal(third.success, false);
  assert.equal(third.remaining, 0);

  const perClient = limiter("handler", Ratelimit.slidingWindow(4, "1 h"));
  const server = http.createServer(async (request, response) => {
    const { success, remaining } = await perClient.limit(request.socket.remoteAddress);
    response.statusCode = success ? 200 : 429;
    response.setHeader("x-ratelimit-remaining", remaining);
    response.end(success ? "ok" : "slow down");
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = `http://127.0.0.1:${server.address().port}/`;
  const statuses = [];
  for (let i = 0; i < 6; i++) statuses.push((await fetch(address)).status);
  server.close();
  assert.deepEqual(statuses, [200, 200, 200, 200, 429, 429]);
});
