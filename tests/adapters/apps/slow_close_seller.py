"""A Flask development server whose paid answer is sent whole before its body ends (the
iterator works on for half a second): a SIGTERM as the buyer receives it still charges it.

Env: PORT, FOURMICA_X402_DB (the embedded Core's database URL), PAY_TO.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from flask import Flask, Response
from fourmica_x402.adapters.flask import FourmicaX402, paid

app = Flask(__name__)
app.config.update(
    FOURMICA_X402_PAY_TO=os.environ["PAY_TO"], FOURMICA_X402_CORE=os.environ["FOURMICA_X402_DB"]
)
FourmicaX402(app)


def slow_end() -> Iterator[bytes]:
    """A body that works on (a cleanup, say) after its last byte went out."""
    yield b"the premium answer"
    time.sleep(0.5)


@app.get("/free")
def free() -> str:
    return "free"


@app.get("/premium")
@paid(price="$0.01")
def premium() -> Response:
    return Response(slow_end(), headers={"Content-Length": "18"})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
