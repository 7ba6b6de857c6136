// Socket.IO with the Redis adapter: two servers, a client on each, and a room broadcast that
// crosses from one server to the other, as the seeds' chat and notifications do.
import { createAdapter } from "@socket.io/redis-adapter";
import { createServer } from "node:http";
import { createClient } from "redis";
import { Server } from "socket.io";
import { io as connect } from "socket.io-client";
import { assert, prefix, run, waitFor, url } from "./common.mjs";

async function startServer() {
  const pub = createClient({ url });
  const sub = pub.duplicate();
  pub.on("error", () => {});
  sub.on("error", () => {});
  await Promise.all([pub.connect(), sub.connect()]);
  const http = createServer();
  const io = new Server(http, { adapter: createAdapter(pub, sub, { key: `${prefix}socket.io` }) });
  io.on("connection", (socket) => socket.on("join", (room, done) => {
    socket.join(room);
    done();
  }));
  await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));
  return { io, http, pub, sub, port: http.address().port };
}

run(async () => {
  const [a, b] = await Promise.all([startServer(), startServer()]);
  const clientA = connect(`http://127.0.0.1:${a.port}`, { transports: ["websocket"] });
  const clientB = connect(`http://127.0.0.1:${b.port}`, { transports: ["websocket"] });
  const receivedA = [];
  const receivedB = [];
  clientA.on("chat", (message) => receivedA.push(message));
  clientB.on("chat", (message) => receivedB.push(message));
  await Promise.all([clientA, clientB].map((client) => client.emitWithAck("join", "room-1")));

  a.io.to("room-1").emit("chat", "from server A");
  b.io.to("room-1").emit("chat", "from server B");
  await waitFor("both broadcasts on both clients", () => receivedA.length >= 2 && receivedB.length >= 2);
  assert.deepEqual(receivedA.sort(), ["from server A", "from server B"]);
  assert.deepEqual(receivedB.sort(), ["from server A", "from server B"]);

  // The adapter waits for as many answers as PUBSUB NUMSUB counts servers on its channel.
  const sockets = await a.io.in("room-1").fetchSockets();
  assert.equal(sockets.length, 2, "fetchSockets sees the client on the other server");

  clientA.close();
  clientB.close();
  for (const server of [a, b]) {
    server.io.close();
    await Promise.all([server.pub.close(), server.sub.close()]);
  }
});
