// The home page, rendered once at build time.
module.exports = ({ buildId }) => `<!doctype html>
<title>nextjs corpus</title>
<h1>nextjs corpus: pre-rendered page</h1>
<p>build ${buildId}</p>
`;
