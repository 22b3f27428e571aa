#!/usr/bin/env python
"""A Django seller: GET /premium costs $0.01 (USDC on Base Sepolia); GET /free is open.

Run it:   python examples/django_seller/manage.py          (= runserver on 127.0.0.1:$PORT)
          or under a server: shop/asgi.py (uvicorn), shop/wsgi.py (gunicorn)
Needs:    pip install "fourmica-x402[django]"
Env:      PORT (8000) · FOURMICA_X402_DB (sqlite:///fourmica_x402.db) · PAY_TO (see shop/settings.py)
"""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    from django.core.management import execute_from_command_line

    argv = sys.argv if len(sys.argv) > 1 else [sys.argv[0], "runserver", "--noreload"]
    if argv[1:2] == ["runserver"] and not any(":" in a or a.isdigit() for a in argv[2:]):
        argv = [*argv, f"127.0.0.1:{os.environ.get('PORT', '8000')}"]
    execute_from_command_line(argv)
