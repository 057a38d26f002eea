// The Socket.IO peer of `carapace bench`: a Socket.IO 4 server with the Redis adapter, as a
// user would deploy it to fan out across replicas. Clients emit "sub" (room, ack) to join a
// room and "pub" (room, data) to broadcast `data` as event "msg" to everyone in the room, on
// every replica sharing the Redis server.
//
// Usage: node socketio-server.mjs --port 9001 [--redis redis://127.0.0.1:6379]
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const port = Number(arg("port", process.env.PORT || "9001"));
const host = arg("host", "127.0.0.1");
const redisUrl = arg("redis", process.env.REDIS_URL || "redis://127.0.0.1:6379");

const pubClient = createClient({ url: redisUrl });
const subClient = pubClient.duplicate();
pubClient.on("error", (e) => console.error("redis pub:", e.message));
subClient.on("error", (e) => console.error("redis sub:", e.message));
await Promise.all([pubClient.connect(), subClient.connect()]);

const httpServer = createServer((req, res) => {
  res.writeHead(req.url === "/healthz" ? 200 : 404);
  res.end();
});
const io = new Server(httpServer, {
  adapter: createAdapter(pubClient, subClient),
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
});

io.on("connection", (socket) => {
  socket.on("sub", (room, ack) => {
    if (typeof room === "string") socket.join(room);
    if (typeof ack === "function") ack("ok");
  });
  socket.on("pub", (room, data) => {
    if (typeof room === "string") io.to(room).emit("msg", data);
  });
});

httpServer.listen(port, host, () => {
  console.log(`socket.io listening on ${host}:${port} (redis ${redisUrl})`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).finally(() => process.exit(0));
  });
}
