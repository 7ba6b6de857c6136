// redlock: contended acquire, extend and release across several clients, as the seeds'
// booking locks do. Each client increments a shared counter non-atomically under the lock,
// so any overlap of two holders loses an increment.
import { Redis } from "ioredis";
import Redlock from "redlock";
import { assert, host, port, prefix, run, sleep } from "./common.mjs";

run(async () => {
  const resource = `${prefix}lock:booking:42`;
  const counter = `${prefix}bookings`;
  const clients = Array.from({ length: 5 }, () => new Redis({ host, port }));
  let holders = 0;
  let maxHolders = 0;

  await Promise.all(
    clients.map(async (client) => {
      const redlock = new Redlock([client], { retryCount: 200, retryDelay: 10, retryJitter: 10 });
      for (let i = 0; i < 10; i++) {
        let lock = await redlock.acquire([resource], 2000);
        holders += 1;
        maxHolders = Math.max(maxHolders, holders);
        const value = Number((await client.get(counter)) ?? 0);
        await sleep(2);
        if (i === 0) lock = await lock.extend(2000);
        await client.set(counter, value + 1);
        holders -= 1;
        await lock.release();
      }
    }),
  );
  assert.equal(maxHolders, 1, "two clients held the lock at once");
  assert.equal(Number(await clients[0].get(counter)), 50, "an increment was lost under the lock");

  const lock = await new Redlock([clients[0]]).acquire([resource], 100);
  await sleep(150);
  await assert.rejects(lock.release(), "releasing an expired lock fails");
  clients.forEach((client) => client.disconnect());
});
