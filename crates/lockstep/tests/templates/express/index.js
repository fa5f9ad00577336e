// Every visit to / writes a row into MariaDB, reads it back and drops the table again, so the
// answer shows that the database behind the `database` relationship is there and writable.
// Standard library only: the MariaDB command-line client does the talking.

const http = require('http');
const { execFile } = require('child_process');

function relationship(name) {
  const all = JSON.parse(Buffer.from(process.env.PLATFORM_RELATIONSHIPS, 'base64').toString());
  return all[name][0];
}

function sql(statements) {
  const db = relationship('database');
  const args = ['--no-defaults', '-h', db.host, '-P', String(db.port), '-u', db.username,
    '-N', '-B', db.path, '-e', statements];
  return new Promise((resolve, reject) => {
    execFile('mariadb', args, { env: { ...process.env, MYSQL_PWD: db.password } },
      (error, stdout, stderr) => (error ? reject(new Error(stderr || error.message)) : resolve(stdout)));
  });
}

async function roundTrip() {
  const table = `visit_${process.pid}_${Date.now()}`;
  const rows = await sql(
    `CREATE TABLE ${table} (id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(64), what VARCHAR(128));` +
    `INSERT INTO ${table} (who, what) VALUES ('lockstep', 'express corpus');` +
    `SELECT id, who, what FROM ${table};` +
    `DROP TABLE ${table};`);
  const [id, who, what] = rows.trim().split('\t');
  return { id, who, what };
}

const server = http.createServer(async (request, response) => {
  if (request.url !== '/') {
    response.writeHead(404, { 'Content-Type': 'text/plain' });
    response.end('not here\n');
    return;
  }
  try {
    const row = await roundTrip();
    response.writeHead(200, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' });
    response.end(`express corpus app\nrow ${row.id}: ${row.who} / ${row.what}\n`);
  } catch (error) {
    response.writeHead(500, { 'Content-Type': 'text/plain' });
    response.end(`database error: ${error.message}\n`);
  }
});

server.listen(Number(process.env.PORT), '127.0.0.1', () => {
  console.log(`listening on ${process.env.PORT}`);
});
