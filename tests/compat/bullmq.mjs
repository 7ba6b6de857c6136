// BullMQ: a queue with a worker, as the seeds' email and PDF queues run. 1,000 jobs, retries
// with backoff, delayed jobs, a job that always fails, and a graceful close. BullMQ leans on
// blocking commands, Lua scripts and streams. In front of Sentinel, the primary fails over
// while the jobs run, and a job added after it must still run and be reported.
import { Queue, QueueEvents, Worker } from "bullmq";
import { assert, cluster, failOver, host, port, prefix, run, waitFor } from "./common.mjs";

run(async () => {
  // BullMQ's scripts take several keys of a queue at once: on a Redis Cluster its documentation
  // asks for a hash tag in the prefix, so that every key of a queue is in one slot.
  const connection = { host, port, maxRetriesPerRequest: null };
  const options = { connection, ...(cluster && { prefix: "{bull}" }) };
  const name = `${prefix}emails`.replaceAll(":", "-");
  const queue = new Queue(name, options);
  const events = new QueueEvents(name, options);
  await events.waitUntilReady();
  const reported = new Set();
  events.on("completed", ({ jobId }) => reported.add(jobId));

  const attemptsSeen = new Map();
  const completed = new Set();
  const failed = new Set();
  let delayedRanAfter = null;
  const worker = new Worker(
    name,
    async (job) => {
      attemptsSeen.set(job.id, (attemptsSeen.get(job.id) ?? 0) + 1);
      if (job.name === "flaky" && job.attemptsMade < 2) throw new Error("transient failure");
      if (job.name === "broken") throw new Error("always fails");
      if (job.name === "delayed") delayedRanAfter = Date.now() - job.timestamp;
      return { sent: job.data.to };
    },
    // A job whose completion a failover interrupted is taken again once its lock expires.
    { ...options, concurrency: 20, lockDuration: 5_000, stalledInterval: 5_000 },
  );
  worker.on("completed", (job) => completed.add(job.id));
  worker.on("failed", (job) => {
    if (job && job.attemptsMade >= (job.opts.attempts ?? 1)) failed.add(job.id);
  });

  const bulk = Array.from({ length: 1000 }, (_, i) => ({ name: "send", data: { to: `user${i}@example.com` } }));
  const jobs = await queue.addBulk(bulk);
  const flaky = await queue.add("flaky", { to: "flaky@example.com" }, { attempts: 3, backoff: { type: "fixed", delay: 50 } });
  const broken = await queue.add("broken", { to: "nobody" }, { attempts: 2, backoff: { type: "exponential", delay: 20 } });
  const delayed = await queue.add("delayed", { to: "later@example.com" }, { delay: 400 });

  await waitFor("the first jobs to complete", () => completed.size >= 200, 60_000);
  failOver();
  await waitFor("every job to settle", () => completed.size >= 1002 && failed.size >= 1, 90_000);
  // keyward closes the connections that blocked on the old primary, as Sentinel has Redis do,
  // and ioredis reconnects them after BullMQ's retry delay of a second. A job added now runs
  // only once the worker's blocking connection is back, and is reported only once QueueEvents'
  // is: closing a client while it waits to reconnect never ends (an ioredis defect, its issues
  // #1247 and #1830), which no application meets unless it shuts down within that second.
  const late = await queue.add("late", { to: "late@example.com" });
  const lateDone = () => completed.has(late.id) && reported.has(late.id);
  await waitFor("the job added after the failover to run and be reported", lateDone, 30_000);
  for (const job of jobs) assert.ok(completed.has(job.id), `job ${job.id} did not complete`);
  assert.equal(attemptsSeen.get(flaky.id), 3, "the flaky job ran three times");
  assert.ok(completed.has(flaky.id));
  assert.ok(failed.has(broken.id));
  assert.equal(attemptsSeen.get(broken.id), 2);
  assert.ok(delayedRanAfter >= 400, `the delayed job ran after ${delayedRanAfter} ms`);

  const result = await (await queue.getJob(jobs[0].id)).returnvalue;
  assert.deepEqual(result, { sent: "user0@example.com" });
  const counts = await queue.getJobCounts("completed", "failed", "waiting", "active", "delayed");
  assert.deepEqual(counts, { completed: 1003, failed: 1, waiting: 0, active: 0, delayed: 0 });

  await worker.close();
  await events.close();
  await queue.obliterate({ force: true });
  await queue.close();
});
