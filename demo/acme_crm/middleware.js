// What json-server lacks to behave like the Acme CRM of connectors/acme-crm.json.
//
// Usable on its own with `json-server --middlewares middleware.js db.json`, and
// loaded by server.js (the in-memory server the demo and the end-to-end tests run):
//
// * X-Api-Key: every request to a collection needs the key in ACME_API_KEY (401 otherwise);
// * ids: POST gets the next integer id of its collection, never reused after a delete
//   (json-server's own ids are max(id) + 1, which hands a deleted id out again);
// * createdAt / updatedAt stamped on POST, updatedAt on PUT/PATCH (createdAt kept when
//   server.js exposes the database as app.locals.db);
// * Idempotency-Key on POST: a repeated key answers the record the first create made (as
//   it is now) with 201 and `Idempotent-Replayed: true` (Stripe's header), and creates
//   nothing (the connector declares the header, as real CRMs offer it).
'use strict';

const COLLECTIONS = new Set(['companies', 'people', 'tickets']);
const state = { nextId: {}, idempotent: new Map() };

function collectionOf(req) {
  const match = /^\/([^/?]+)(?:\/([^/?]+))?/.exec(req.path || req.url);
  return match && COLLECTIONS.has(match[1]) ? { name: match[1], id: match[2] } : null;
}

function nextId(name, db) {
  if (state.nextId[name] === undefined) {
    const existing = db ? db.get(name).map('id').value().filter(Number.isInteger) : [];
    state.nextId[name] = existing.length ? Math.max(...existing) + 1 : 1;
  }
  return state.nextId[name]++;
}

function middleware(req, res, next) {
  const target = collectionOf(req);
  if (!target) return next();
  const key = process.env.ACME_API_KEY;
  if (key && req.get('X-Api-Key') !== key) {
    return res.status(401).json({ message: 'missing or wrong X-Api-Key' });
  }
  const db = req.app.locals.db;
  const now = new Date().toISOString();
  if (req.method === 'POST' && !target.id) {
    const idemKey = req.get('Idempotency-Key');
    const remembered = idemKey && state.idempotent.get(`${target.name} ${idemKey}`);
    if (remembered) {
      const current = db ? db.get(target.name).getById(remembered.id).value() : null;
      res.set('Idempotent-Replayed', 'true');
      return res.status(201).json(current || remembered);
    }
    req.body = Object.assign({}, req.body, { id: nextId(target.name, db), createdAt: now,
                                             updatedAt: now });
    if (idemKey) state.idempotent.set(`${target.name} ${idemKey}`, req.body);
  } else if ((req.method === 'PUT' || req.method === 'PATCH') && target.id) {
    const stored = db ? db.get(target.name).getById(target.id).value() : null;
    const extra = { updatedAt: now };
    if (req.method === 'PUT' && stored) extra.createdAt = stored.createdAt;
    delete req.body.id;
    delete req.body.createdAt;
    req.body = Object.assign({}, req.body, extra);
  }
  return next();
}

// Forget ids and idempotency keys (server.js calls it on reset; ids keep growing).
middleware.reset = () => { state.idempotent.clear(); };

module.exports = middleware;
