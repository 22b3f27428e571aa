"""The shop under a WSGI server (from the repository root, as the README runs it):

FOURMICA_X402_DB=sqlite:///$PWD/fourmica_x402.db gunicorn --chdir examples/django_seller -b 127.0.0.1:8000 shop.wsgi

``--chdir`` moves the working directory: a relative database URL (the default,
sqlite:///fourmica_x402.db) would be a new, empty Core in examples/django_seller, not the one
``fourmica-x402 deposit --db sqlite:///fourmica_x402.db`` funds from the root.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
application = get_wsgi_application()
