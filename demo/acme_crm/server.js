// The Acme CRM stand-in of the demo and the end-to-end tests: json-server 0.17 through its
// module API (started by demo/thirdparty.py, or by the acme-crm service of docker-compose.yml).
//
//   node server.js DB_JSON [PORT] [HOST]      (PORT 0: any free port)
//
// DB_JSON holds the collections to start from (db.json beside this file: all empty).
//
// The database is the content of DB_JSON held in memory (lowdb's Memory adapter): the
// json-server CLI writes the whole file after every change (and, with --watch, reloads
// it), which costs O(records) per write. json-server's cascade delete is off (it would
// also delete every person whose companyId is unset). Behaviour a real CRM has and
// json-server lacks comes from middleware.js. Admin routes, not part of the CRM's API:
//
//   POST /__admin/reset   back to DB_JSON's content, idempotency keys forgotten
//                         (ids keep growing: an id is never handed out twice)
//   GET  /db              the whole database (json-server's own route)
//
// Prints "listening on http://HOST:PORT" once it accepts connections.
'use strict';

const fs = require('fs');
const jsonServer = require('json-server');
const middleware = require('./middleware');

const [dbFile, port = '0', host = '127.0.0.1'] = process.argv.slice(2);
if (!dbFile) {
  console.error('usage: node server.js DB_JSON [PORT] [HOST]');
  process.exit(2);
}
const initial = fs.readFileSync(dbFile, 'utf8');
const router = jsonServer.router(JSON.parse(initial), { foreignKeySuffix: '__no_cascade__' });
const app = jsonServer.create();
app.set('json spaces', 0);
app.locals.db = router.db;
app.use(jsonServer.bodyParser);
app.post('/__admin/reset', (req, res) => {
  router.db.setState(JSON.parse(initial));
  middleware.reset();
  res.json({ reset: true });
});
app.use(middleware);
app.use(router);

const server = app.listen(Number(port), host, () => {
  const address = server.address();
  console.log(`listening on http://${address.address}:${address.port}`);
});
server.keepAliveTimeout = 65000;
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
