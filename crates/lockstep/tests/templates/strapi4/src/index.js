// The CMS: at start it makes its tables and records the start in PostgreSQL (as a CMS
// bootstraps its schema), keeps a scratch file in the `.tmp` mount, and answers / with what it
// found.

const fs = require('fs');
const http = require('http');
const path = require('path');
const { query } = require('../config/database');

const root = path.join(__dirname, '..');

function bootstrap() {
  query('CREATE TABLE IF NOT EXISTS core_store (id serial PRIMARY KEY, started_at timestamptz NOT NULL DEFAULT now(), pid int NOT NULL)');
  query(`INSERT INTO core_store (pid) VALUES (${process.pid})`);
  fs.writeFileSync(path.join(root, '.tmp', 'started'), String(process.pid));
}

function page() {
  return {
    app: 'strapi4 corpus',
    node_env: process.env.NODE_ENV,
    starts: Number(query('SELECT count(*) FROM core_store')[0]),
    admin_built: fs.existsSync(path.join(root, 'build', 'admin.html')),
    scratch: fs.readFileSync(path.join(root, '.tmp', 'started'), 'utf8'),
    // Set when the platform sourced .environment before the start command.
    environment_file: process.env.ADMIN_SECRET !== undefined,
  };
}

bootstrap();
http.createServer((request, response) => {
  if (request.url !== '/') {
    response.writeHead(404, { 'Content-Type': 'text/plain' });
    response.end('not here\n');
    return;
  }
  try {
    const body = JSON.stringify(page());
    response.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
    response.end(`${body}\n`);
  } catch (error) {
    response.writeHead(500, { 'Content-Type': 'text/plain' });
    response.end(`error: ${error.message}\n`);
  }
}).listen(Number(process.env.PORT), '127.0.0.1', () => console.log(`listening on ${process.env.PORT}`));
