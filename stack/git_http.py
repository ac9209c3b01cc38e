"""The `git` service: the stack's bare repository over git's smart HTTP, clone and push, with Basic auth.

`python -m stack.git_http HOST PORT ROOT` serves ROOT (GIT_PROJECT_ROOT; the stack's
<state>/git holding vae-pipeline.git). Every request must carry HTTP Basic credentials
equal to VAE_STACK_GIT_USER / VAE_STACK_GIT_PASSWORD from this process's environment
(never its command line); others get 401. An authenticated request runs `git http-backend`
as a CGI program with REMOTE_USER set, which is what lets it accept pushes (receive-pack).
The log names method, path and status, never a header.
"""
import base64
import hmac
import os
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vae_pipeline.environment import STACK_GIT_PASSWORD, STACK_GIT_USER

REALM = "vae-stack git"


def expected_credentials() -> bytes:
    return f"{os.environ[STACK_GIT_USER]}:{os.environ[STACK_GIT_PASSWORD]}".encode()


def authorized(header: str | None, expected: bytes) -> bool:
    """True if `header` is `Basic base64(user:password)` with exactly the expected pair."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(given, expected)        # constant time: no timing hint of the password


def init_repository(root: Path, name: str) -> bool:
    """`git init --bare` ROOT/NAME unless it exists; True if made."""
    repository = root / name
    if (repository / "HEAD").exists():
        return False
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(repository)], check=True,
                   capture_output=True)
    return True


class Handler(BaseHTTPRequestHandler):
    server_version = "vae-stack-git"
    root: Path = Path(".")
    credentials: bytes = b""

    def do_GET(self):
        self.serve()

    def do_POST(self):
        self.serve()

    def serve(self) -> None:
        if not authorized(self.headers.get("Authorization"), self.credentials):
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Basic realm="{REALM}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.request_body()
        path, _, query = self.path.partition("?")
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": self.credentials.split(b":", 1)[0].decode(),
            "REMOTE_ADDR": self.client_address[0], "REQUEST_METHOD": self.command, "PATH_INFO": path,
            "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1"}
        if self.headers.get("Content-Encoding"):       # a gzipped push: http-backend inflates it
            environment["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            environment["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        # Answers are read whole, then sent: the repository holds code (data goes to DVC's remote).
        result = subprocess.run(["git", "http-backend"], input=body, env=environment, capture_output=True)
        # A CGI answer: header lines (Status: among them), a blank line, the body.
        for separator in (b"\r\n\r\n", b"\n\n"):
            if separator in result.stdout:
                head, content = result.stdout.split(separator, 1)
                break
        else:
            head, content = b"", result.stdout
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        if result.returncode != 0 and not head:
            status, content = 500, b"git http-backend failed\n"
            sys.stderr.write(result.stderr.decode(errors="replace")[-500:])
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def request_body(self) -> bytes:
        """The request's body, whether sent with a length or chunked (git chunks large pushes)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass                       # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()              # the CRLF after each chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format, *args):          # the default logs the request line only; keep it so
        sys.stderr.write(f"{self.client_address[0]} {format % args}\n")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m stack.git_http HOST PORT ROOT", file=sys.stderr)
        return 2
    host, port, root = argv[0], int(argv[1]), Path(argv[2])
    if shutil.which("git") is None:
        print("git is not installed", file=sys.stderr)
        return 2
    Handler.root, Handler.credentials = root, expected_credentials()
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    print(f"serving {root} on http://{host}:{port}/", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
