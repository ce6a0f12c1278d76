"""A WSGI upstream that routes the way Python frameworks do, for the hardening tests.

PATH_INFO arrives percent-decoded (wsgiref decodes %2F to "/" too); like many frameworks and
static file handlers, the router then normalises it (backslashes, dot segments, repeated
slashes) and upper-cases the method. The protected handler serves /private and below; the
answer says which handler ran and what the server saw, including every HTTP_* variable
(where `X_User_ID` and `X-User-ID` both land as HTTP_X_USER_ID).
"""
import json
import posixpath
from wsgiref.simple_server import WSGIRequestHandler, make_server


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    normal = posixpath.normpath(path.replace("\\", "/")) if path else "/"
    while normal.startswith("//"):
        normal = normal[1:]
    private = normal == "/private" or normal.startswith("/private/")
    body = json.dumps(
        {
            "handler": "private" if private else "public",
            "path": path,
            "method": environ["REQUEST_METHOD"].upper(),
            "env": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
        }
    ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
