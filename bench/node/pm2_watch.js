// PM2's view of a reload, for bench/rollout.py: through PM2's own API (one
// connection to its daemon, not a `pm2 jlist` process per poll), prints
// every EVERY ms one JSON line {"t": ms since the epoch, "online": how many
// processes of APP PM2 says are online, "states": their statuses}.
// `node pm2_watch.js PM2_MODULE_DIR APP EVERY`, with PM2_HOME set; stops on
// SIGTERM or when its stdout closes.
'use strict';
const [pm2Dir, app, every] = process.argv.slice(2);
const pm2 = require(pm2Dir);

const stop = () => { pm2.disconnect(); process.exit(0); };
process.on('SIGTERM', stop);
process.stdout.on('error', stop);

pm2.connect(error => {
  if (error) {
    console.error(`cannot reach PM2's daemon: ${error.message}`);
    process.exit(1);
  }
  const poll = () => pm2.list((error, list) => {
    if (!error) {
      const states = list.filter(p => p.name === app).map(p => p.pm2_env.status);
      const online = states.filter(state => state === 'online').length;
      process.stdout.write(JSON.stringify({ t: Date.now(), online, states }) + '\n');
    }
    setTimeout(poll, Number(every));
  });
  poll();
});
