"""Keep secrets out of logs and reports: mask credentials written into URIs.

A tracking URI such as `https://alice:s3cret@mlflow.example.org` or
`postgresql://mlflow:pw@db/mlflow` carries its password in plain text. Anything
the project prints or writes that may hold such a URI goes through `redact_uri`;
the stage entry points (vae_pipeline.cli) also pass every log line through it.
"""
import logging
import re

# scheme://userinfo@ : the userinfo runs to the last "@" before the host's end (/, ?, # or space).
USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/?#]*)@")
# ?token=... &password=... : query parameters whose name says they hold a secret.
SECRET_QUERY = re.compile(r"(?P<name>[?&][^=&\s#]*(?:pass|pwd|token|secret|key|signature|sig)[^=&\s#]*=)"
                          r"[^&\s#]*", re.IGNORECASE)
MASK = "***"


def mask_userinfo(match: re.Match) -> str:
    user, colon, _password = match["userinfo"].partition(":")
    # Keep the user name when a password follows it (it helps debugging); a lone
    # user part may itself be a token (https://TOKEN@host), so it is masked.
    kept = f"{user}:{MASK}" if colon else MASK
    return f"{match['scheme']}{kept}@"


def redact_uri(text: str) -> str:
    """`text` (a URI, or a message holding URIs) with passwords, tokens and secret query values masked."""
    text = USERINFO.sub(mask_userinfo, str(text))
    return SECRET_QUERY.sub(lambda m: m["name"] + MASK, text)


def redact_log_record(record: logging.LogRecord) -> bool:
    """A logging filter: rewrite the record's message with secrets masked, and keep it."""
    message = record.getMessage()
    redacted = redact_uri(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    return True
