// A plain Node.js worker (no cluster API, no library of ours): echoes
// numbers, counts small messages and says "done" after COUNT of them.
// `node worker.js METRIC COUNT`; used under our primary (channel node) and
// under Node's own cluster primary.
'use strict';
const count = Number(process.argv[3] || 0);
let seen = 0;
process.on('message', message => {
  if (typeof message === 'number') process.send(message);
  else if ((seen += 1) === count) process.send('done');
});
process.send('ready');
