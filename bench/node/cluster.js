// Node's own cluster module doing each benchmark job, as a Node user would
// write it: `node cluster.js METRIC COUNT`. Prints {"value": X}.
'use strict';
const cluster = require('node:cluster');
const fs = require('node:fs');

const [metric, countArg] = process.argv.slice(2);
const count = Number(countArg || 1);
const small = seq => ({ seq, data: 'x'.repeat(36) });
const large = 'y'.repeat(64 * 1024);
const now = () => process.hrtime.bigint();
const seconds = (from) => Number(now() - from) / 1e9;
const report = value => { console.log(JSON.stringify({ value })); };
const rssMiB = pid => {
  const line = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find(l => l.startsWith('VmRSS:'));
  return Number(line.replace(/\D+/g, '')) / 1024;
};

if (cluster.isWorker && metric === 'http') {
  require('node:http').createServer((request, response) => response.end('hello')).listen(0);
} else if (cluster.isWorker) {
  let seen = 0;
  process.on('message', message => {
    if (metric === 'pingpong') {
      process.send(message);
    } else if (metric === 'request' || metric === 'requests') {
      process.send({ id: message.id, n: message.n });
    } else if (metric === 'up') {
      for (let seq = 0; seq < count; seq += 1) process.send(small(seq));
    } else if (metric === 'down' || metric === 'broadcast' || metric === 'large') {
      seen += 1;
      if (seen === count) process.send('done');
    }
  });
  process.send('ready');
} else {
  const nodeWorker = metric.startsWith('node-');
  cluster.setupPrimary(nodeWorker
    ? { exec: require('node:path').join(__dirname, 'worker.js'), args: [metric.slice(5), String(count)] }
    : { exec: __filename, args: [metric, String(count)] });

  const fork = n => new Promise(resolve => {
    const workers = [];
    for (let i = 0; i < n; i += 1) {
      const worker = cluster.fork();
      worker.once('message', () => {
        workers.push(worker);
        if (workers.length === n) resolve(workers);
      });
    }
  });
  const shutDown = () => new Promise(resolve => cluster.disconnect(resolve));
  const exited = workers => Promise.all(workers.map(w => new Promise(r => w.process.exitCode !== null ? r() : w.once('exit', r))));
  const done = (workers) => new Promise(resolve => {
    let left = workers.length;
    for (const worker of workers) worker.on('message', m => { if (m === 'done' && (left -= 1) === 0) resolve(); });
  });

  const jobs = {
    async spawn () {
      const started = now();
      const workers = await fork(count);
      const value = seconds(started) * 1e3 / count;
      await shutDown(); await exited(workers);
      return value;
    },
    async pingpong () {
      const [worker] = await fork(1);
      const started = now();
      await new Promise(resolve => {
        worker.on('message', n => { if (n + 1 < count) worker.send(n + 1); else resolve(); });
        worker.send(0);
      });
      const value = seconds(started) * 1e6 / count;
      await shutDown();
      return value;
    },
    async request () {
      // Request/response by hand, as Node's cluster users do: ids and a map.
      const [worker] = await fork(1);
      const ask = requester(worker);
      const started = now();
      for (let n = 0; n < count; n += 1) await ask(n);
      const value = seconds(started) * 1e6 / count;
      await shutDown();
      return value;
    },
    async requests () {
      const workers = await fork(4);
      const asks = workers.map(requester);
      const started = now();
      let next = 0;
      const lane = async () => { while (next < count) { const n = next; next += 1; await asks[n % 4](n); } };
      await Promise.all(Array.from({ length: 256 }, lane));
      const value = count / seconds(started);
      await shutDown();
      return value;
    },
    async down () { return sendAll(1, () => small(1)); },
    // The same worker script as under our primary (bench/node/worker.js).
    'node-pingpong' () { return jobs.pingpong(); },
    'node-down' () { return jobs.down(); },
    async large () { return (await sendAll(1, () => large)) * large.length / 1e6; },
    async broadcast () { return 4 * await sendAll(4, () => small(1)); },
    async up () {
      const [worker] = await fork(1);
      const started = now();
      await new Promise(resolve => {
        let seen = 0;
        worker.on('message', m => { if (typeof m === 'object' && (seen += 1) === count) resolve(); });
        worker.send('go');
      });
      const value = count / seconds(started);
      await shutDown();
      return value;
    },
    async restart () {
      let [worker] = await fork(1);
      let total = 0n;
      for (let i = 0; i < count; i += 1) {
        const started = now();
        const replaced = new Promise(resolve => {
          worker.once('exit', () => {
            const next = cluster.fork();
            next.once('message', () => resolve(next));
          });
        });
        worker.process.kill('SIGKILL');
        worker = await replaced;
        total += now() - started;
      }
      await shutDown();
      return Number(total) / 1e6 / count;
    },
    async shutdown () {
      const workers = await fork(count);
      const started = now();
      await shutDown(); await exited(workers);
      return seconds(started) * 1e3;
    },
    async http () {
      // Two workers on one port (Node's cluster shares it; port 0 is one port).
      const port = await new Promise(resolve => {
        let listening = 0;
        cluster.on('listening', (worker, address) => { if ((listening += 1) === 2) resolve(address.port); });
        cluster.fork(); cluster.fork();
      });
      const rate = await new Promise((resolve, reject) => {
        require('node:child_process').execFile('wrk', ['-t2', '-c64', `-d${count}s`, `http://127.0.0.1:${port}/`], (error, stdout) => {
          const match = /Requests\/sec:\s+([\d.]+)/.exec(stdout);
          if (error || !match || stdout.includes('Socket errors')) reject(error || new Error(stdout)); else resolve(Number(match[1]));
        });
      });
      await shutDown();
      return rate;
    },
    async 'rss-primary' () { const w = await fork(1); const v = rssMiB(process.pid); await shutDown(); await exited(w); return v; },
    async 'rss-worker' () { const w = await fork(1); const v = rssMiB(w[0].process.pid); await shutDown(); await exited(w); return v; }
  };

  // Sends `count` messages to each of `n` workers; deliveries counted when
  // every worker has received them all. Sends are not awaited one by one:
  // Node queues them, as a user would let it.
  async function sendAll (n, make) {
    const workers = await fork(n);
    const finished = done(workers);
    const started = now();
    for (let i = 0; i < count; i += 1) {
      const message = make();
      for (const worker of workers) worker.send(message);
      if (i % 1024 === 1023) await new Promise(setImmediate);
    }
    await finished;
    const value = count / seconds(started);
    await shutDown(); await exited(workers);
    return value;
  }

  function requester (worker) {
    const waiting = new Map();
    let id = 0;
    worker.on('message', reply => {
      const resolve = waiting.get(reply.id);
      if (resolve) { waiting.delete(reply.id); resolve(reply.n); }
    });
    return n => new Promise(resolve => { id += 1; waiting.set(id, resolve); worker.send({ type: 'echo', id, n }); });
  }

  jobs[metric]().then(report, error => { console.error(error); process.exit(1); });
}
