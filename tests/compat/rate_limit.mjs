// express-rate-limit with the rate-limit-redis store: an express app hit past its limit
// answers 429 at the right count, as the seeds' login limits do.
import express from "express";
import { rateLimit } from "express-rate-limit";
import { RedisStore } from "rate-limit-redis";
import { createClient } from "redis";
import { assert, prefix, run, url } from "./common.mjs";

run(async () => {
  const client = createClient({ url });
  client.on("error", () => {});
  await client.connect();
  const app = express();
  app.use(
    "/login",
    rateLimit({
      windowMs: 60_000,
      limit: 5,
      standardHeaders: "draft-7",
      legacyHeaders: false,
      store: new RedisStore({ prefix: `${prefix}rl:`, sendCommand: (...args) => client.sendCommand(args) }),
    }),
  );
  app.post("/login", (request, response) => response.send("ok"));
  const server = await new Promise((resolve) => {
    const listening = app.listen(0, "127.0.0.1", () => resolve(listening));
  });
  const address = `http://127.0.0.1:${server.address().port}/login`;
  const statuses = [];
  for (let i = 0; i < 8; i++) statuses.push((await fetch(address, { method: "POST" })).status);
  assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
  server.close();
  await client.close();
});
