#!/usr/bin/env node
// pagekit build: renders every module of pages/ into .next/server/pages/NAME.html and writes
// .next/BUILD_ID. pagekit start -p PORT: serves that output and public/. Like Next.js's server,
// it listens first and loads the build while it prepares, then exits when there is none: until
// the deploy hook copied the build into the `.next` mount, it starts and dies.

const fs = require('fs');
const http = require('http');
const path = require('path');

const app = process.cwd();
const output = path.join(app, '.next');

function build() {
  const pages = path.join(app, 'pages');
  const rendered = path.join(output, 'server', 'pages');
  fs.mkdirSync(rendered, { recursive: true });
  const id = `build-${Date.now().toString(36)}`;
  for (const file of fs.readdirSync(pages)) {
    const render = require(path.join(pages, file));
    const name = path.basename(file, '.js');
    fs.writeFileSync(path.join(rendered, `${name}.html`), render({ buildId: id }));
  }
  fs.writeFileSync(path.join(output, 'BUILD_ID'), id);
  console.log(`pagekit: built ${id}`);
}

function start(port) {
  const idFile = path.join(output, 'BUILD_ID');
  let id = null;
  // Requests that arrive while it prepares wait for it, as Next.js's do.
  const waiting = [];
  const server = http.createServer((request, response) => {
    if (id === null) {
      waiting.push(() => serve(request, response));
      return;
    }
    serve(request, response);
  });
  function serve(request, response) {
    const url = new URL(request.url, 'http://app');
    const page = url.pathname === '/' ? 'index' : url.pathname.slice(1);
    const candidates = [
      path.join(output, 'server', 'pages', `${page}.html`),
      path.join(app, 'public', page),
    ];
    const found = candidates.find((file) => !page.includes('..') && fs.existsSync(file) && fs.statSync(file).isFile());
    if (!found) {
      response.writeHead(404, { 'Content-Type': 'text/plain' });
      response.end('404: this page could not be found\n');
      return;
    }
    const type = found.endsWith('.html') ? 'text/html' : 'text/plain';
    response.writeHead(200, { 'Content-Type': type, 'X-Build-Id': id });
    response.end(fs.readFileSync(found));
  }
  server.listen(port, '127.0.0.1', () => {
    console.log(`pagekit: listening on ${port}, preparing`);
    // The framework prepares after it listens; a missing build ends the process then.
    setTimeout(() => {
      if (!fs.existsSync(idFile)) {
        console.error(`pagekit: no build found in ${output}; run \`pagekit build\` first`);
        process.exit(1);
      }
      id = fs.readFileSync(idFile, 'utf8').trim();
      console.log(`pagekit: ready, serving ${id}`);
      waiting.splice(0).forEach((serveLater) => serveLater());
    }, 500);
  });
}

const [command, ...rest] = process.argv.slice(2);
if (command === 'build') {
  build();
} else if (command === 'start') {
  const flag = rest.indexOf('-p');
  start(Number(flag >= 0 ? rest[flag + 1] : process.env.PORT || 3000));
} else {
  console.error('usage: pagekit build | pagekit start -p PORT');
  process.exit(2);
}
