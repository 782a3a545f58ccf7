// An express server under `isotropic-cluster run` (README, "Recipes"): it
// serves the shared `--listen` socket at fd 3, says it is ready on the Node
// channel once listening, and closes when the primary disconnects it (the
// graceful shutdown: requests in hand finish, then the process exits 0).
//
//   isotropic-cluster run --workers 4 --listen 127.0.0.1:8080 --channel node --ready message -- \
//       node examples/recipes/express_server.js
const express = require('express');

const app = express();
app.get('/', (req, res) => {
  res.type('text/plain').send(`slot ${process.env.ISOTROPIC_CLUSTER_SLOT} pid ${process.pid}\n`);
});
const server = app.listen({ fd: 3 }, () => process.send('ready'));
process.on('disconnect', () => server.close());
