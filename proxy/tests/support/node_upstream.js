// A Node upstream that routes the way Node frameworks do, for the hardening tests: the
// WHATWG URL parser resolves dot segments (also %2e), turns backslashes into slashes, and
// the router matches the percent-decoded pathname. The protected handler serves /private
// and below; the answer says which handler ran.
const http = require("http");

const server = http.createServer((req, res) => {
  let path;
  try {
    path = decodeURIComponent(new URL(req.url, "http://upstream").pathname);
  } catch (e) {
    path = req.url;
  }
  path = path.replace(/\/+/g, "/");
  const privateHandler = path === "/private" || path.startsWith("/private/");
  const body = JSON.stringify({
    handler: privateHandler ? "private" : "public",
    path: req.url,
    method: req.method,
    headers: req.headers,
  });
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
});
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
