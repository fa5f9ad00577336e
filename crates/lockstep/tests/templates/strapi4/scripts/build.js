// The build step: renders the admin panel into build/, as a CMS bundles its admin UI.

const fs = require('fs');
const path = require('path');

const out = path.join(__dirname, '..', 'build');
fs.mkdirSync(out, { recursive: true });
fs.writeFileSync(path.join(out, 'admin.html'),
  `<h1>corpus admin</h1><p>built for ${process.env.PLATFORM_APPLICATION_NAME || 'nobody'}</p>\n`);
console.log('admin panel built');
