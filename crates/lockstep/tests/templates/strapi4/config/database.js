// Where the content lives: the `postgresdatabase` relationship, decoded from
// PLATFORM_RELATIONSHIPS.

const { execFileSync } = require('child_process');

function credentials() {
  const all = JSON.parse(Buffer.from(process.env.PLATFORM_RELATIONSHIPS, 'base64').toString());
  return all.postgresdatabase[0];
}

// Runs SQL with psql; the rows, one string per line.
function query(sql) {
  const db = credentials();
  const out = execFileSync('psql', ['-h', db.host, '-p', String(db.port), '-U', db.username,
    '-d', db.path, '-qtA', '-v', 'ON_ERROR_STOP=1', '-c', sql],
  { env: { ...process.env, PGPASSWORD: db.password }, encoding: 'utf8' });
  return out.split('\n').filter((line) => line !== '');
}

module.exports = { credentials, query };
