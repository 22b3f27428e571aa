"""Framework adapters, installed as ``fourmica_x402.adapters``.

Each adapter is a thin layer over :mod:`fourmica_x402.gate`; import the one
for your framework (its extra must be installed), e.g.
``from fourmica_x402.adapters.asgi import PaymentMiddleware``.
"""
