// Shared by the compatibility programs: the target from the environment, assertions that
// name what deviated, and a deadline so that a hang is a failure, not a stuck CI.
import { execSync } from "node:child_process";
import assert from "node:assert/strict";

export const host = process.env.COMPAT_HOST ?? "127.0.0.1";
if (!process.env.COMPAT_PORT) throw new Error("COMPAT_PORT is not set: run these through run.sh");
export const port = Number(process.env.COMPAT_PORT);
export const url = `redis://${host}:${port}`;
/** keyward's REST API and a token for it, for the programs that use Upstash's SDKs. */
export const restUrl = process.env.COMPAT_REST_URL;
export const restToken = process.env.COMPAT_REST_TOKEN;
export { assert };

/** A key prefix of this run, so programs never see each other's keys. */
export const prefix = `compat:${process.pid}:${Date.now()}:`;

/** COMPAT_CLUSTER=1: the target is keyward in front of a Redis Cluster. */
export const cluster = process.env.COMPAT_CLUSTER === "1";

/**
 * Names for keys that one transaction or script uses together. A Redis Cluster refuses a
 * transaction or script whose keys are in several hash slots, so an application on a cluster
 * puts such keys in one slot with a hash tag: in cluster mode these names do the same; elsewhere
 * they are plain keys under the run's prefix.
 */
export const sameSlot = (group) => (name) => (cluster ? `${prefix}{${group}}${name}` : prefix + name);

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Fails the primary behind keyward over to a replica (COMPAT_FAILOVER, in the pass in front
 * of Redis Sentinel), when the runner allows it. Unlike a restart, the data stays (but for
 * writes that reached the old primary in the moment of the switch), so a program can keep its
 * work going across it.
 */
export function failOver() {
  if (!process.env.COMPAT_FAILOVER) return false;
  execSync(process.env.COMPAT_FAILOVER, { stdio: "inherit" });
  return true;
}

/** Restarts the target (Redis or keyward) on the same port, when the runner allows it. */
export function restartTarget() {
  if (!process.env.COMPAT_RESTART) return false;
  execSync(process.env.COMPAT_RESTART, { stdio: "inherit" });
  return true;
}

export async function waitFor(what, predicate, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Runs a program's main with a deadline; exits non-zero on any failure. */
export function run(main, deadlineMs = 90_000) {
  const timer = setTimeout(() => {
    console.error(`deadline of ${deadlineMs} ms exceeded`);
    process.exit(2);
  }, deadlineMs);
  main().then(
    () => {
      clearTimeout(timer);
      process.exit(0);
    },
    (error) => {
      console.error(error?.stack ?? error);
      process.exit(1);
    },
  );
}
