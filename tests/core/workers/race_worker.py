"""Race worker: accepts the guarantees of a JSON file against a shared Core.

Run by tests/core/test_core_concurrency.py as a separate process:
    python race_worker.py STORE_URL JOB_FILE GO_FILE
Prints one JSON line: {"won": [guarantee ids], "reasons": {reason: count}}.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

from fourmica_x402.core import Core, Expected
from fourmica_x402.errors import GuaranteeRejected
from fourmica_x402.guarantee import SignedGuarantee


def main() -> None:
    url, job_file, go_file = sys.argv[1:4]
    with open(job_file) as fh:
        job = json.load(fh)
    core = Core(url)
    items = [(SignedGuarantee.from_json(j["signed"]), Expected(**j["expected"])) for j in job]
    deadline = time.monotonic() + 30
    while not os.path.exists(go_file) and time.monotonic() < deadline:
        time.sleep(0.001)
    won, reasons = [], collections.Counter()
    for signed, expected in items:
        try:
            won.append(core.accept(signed, expected).guarantee_id)
        except GuaranteeRejected as exc:
            reasons[str(exc.reason)] += 1
    print(json.dumps({"won": won, "reasons": reasons}))


if __name__ == "__main__":
    main()
