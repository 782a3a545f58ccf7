// The HTTP app of bench/rollout.py, the same file under both supervisors
// (node:http only, no npm dependency). It works START_MS (default 300) ms
// before it listens, as a real app loads its code and config, so that a
// reload's gaps show; then says 'ready' (process.send) once it listens:
// - under isotropic-cluster (`run --listen ADDR --channel node`) on the
//   passed socket, fd 3 (LISTEN_FDS set);
// - under PM2 (cluster mode, wait_ready) on PORT, shared by Node's cluster.
// It stops taking connections and exits once told to leave (disconnect,
// SIGINT, SIGTERM). With ROLLOUT_LOG set it appends one JSON line per change
// of its state ({"pid", "state": "serving"|"leaving", "t": ms since the
// epoch, "why": what told it to leave}), the app's own view of how many
// workers serve.
'use strict';
const fs = require('node:fs');
const http = require('node:http');

const note = (state, why) => {
  if (process.env.ROLLOUT_LOG) {
    fs.appendFileSync(process.env.ROLLOUT_LOG, JSON.stringify({ pid: process.pid, state, t: Date.now(), why }) + '\n');
  }
};

const until = Date.now() + Number(process.env.START_MS || 300);
let work = 0;
while (Date.now() < until) work += Math.sqrt(work + 1);

const server = http.createServer((request, response) => response.end('ok\n'));
server.listen(process.env.LISTEN_FDS ? { fd: 3 } : Number(process.env.PORT), () => {
  note('serving');
  if (process.send) process.send('ready');
});

let leaving = false;
const leave = why => {
  if (leaving) return;
  leaving = true;
  note('leaving', why);
  server.close(() => process.exit(0));
};
process.on('disconnect', () => leave('disconnect'));
process.on('SIGINT', () => leave('SIGINT'));
process.on('SIGTERM', () => leave('SIGTERM'));
