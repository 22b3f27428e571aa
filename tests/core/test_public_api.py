"""The public surface: what `import fourmica_x402` exposes and what it loads."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import fourmica_x402
import fourmica_x402.client

FRAMEWORKS = ("starlette", "fastapi", "flask", "django", "werkzeug", "uvicorn", "gunicorn")

PINNED_ALL = [
    "Asset",
    "ConfigurationError",
    "Core",
    "CoreConfig",
    "CoreError",
    "DENY",
    "Eip712Domain",
    "Facilitator",
    "FourmicaError",
    "GRANT",
    "Gate",
    "GuaranteeClaims",
    "GuaranteeRejected",
    "HttpFacilitator",
    "Job",
    "Jobs",
    "LocalFacilitator",
    "MalformedPayment",
    "Network",
    "Offer",
    "Payment",
    "PaymentConfig",
    "PaymentError",
    "PaymentPayload",
    "PaymentPayloadV1",
    "PaymentRecord",
    "PaymentRequired",
    "PaymentRequiredV1",
    "PaymentRequirements",
    "PaymentRequirementsV1",
    "Reason",
    "Records",
    "ResourceInfo",
    "RouteConfig",
    "SettleResponse",
    "SignedGuarantee",
    "Slices",
    "Stage",
    "Throttled",
    "TokenAmount",
    "Unavailable",
    "ValidationPolicy",
    "VerifyResponse",
    "Webhooks",
    "__version__",
    "address_of",
    "decode_payment_header",
    "default_asset",
    "encode_header",
    "get_network",
    "recover_signer",
    "register_asset",
    "register_network",
    "sign_claims",
    "to_atomic",
    "verify_signature",
]


#: The buyer's surface (``fourmica_x402.client``); the requests adapter and ``register`` stay in
#: their modules (one imports requests, the other's name is too general for this namespace).
PINNED_CLIENT_ALL = [
    "RECEIPT_KEY",
    "ApprovalRequest",
    "AsyncFourMicaCreditScheme",
    "AsyncPaidStream",
    "AsyncPaymentTransport",
    "AsyncStagedJob",
    "BuyerFlow",
    "BuyerKey",
    "Decision",
    "FourMicaCreditScheme",
    "ListedOffer",
    "ListedResource",
    "PaidStream",
    "PaymentTransport",
    "Receipt",
    "ReceiptLedger",
    "SpendingPolicy",
    "StageFailed",
    "StagedJob",
    "StreamFailed",
    "Task",
    "adiscover",
    "discover",
    "fetch_certificate",
    "fetch_public_key",
    "load_key",
    "verify_certificate",
]


def test_all_is_sorted_pinned_and_importable() -> None:
    assert fourmica_x402.__all__ == sorted(fourmica_x402.__all__)
    assert fourmica_x402.__all__ == PINNED_ALL
    for name in fourmica_x402.__all__:
        assert hasattr(fourmica_x402, name), name


def test_the_client_surface_is_pinned() -> None:
    import fourmica_x402.client as client

    assert client.__all__ == PINNED_CLIENT_ALL
    for name in client.__all__:
        assert hasattr(client, name), name


def test_importing_the_package_loads_no_web_framework() -> None:
    code = (
        "import json, sys, fourmica_x402, fourmica_x402.cli, fourmica_x402.bench;"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = set(json.loads(out.stdout))
    assert "fourmica_x402" in loaded
    assert not loaded & set(FRAMEWORKS), loaded & set(FRAMEWORKS)


def test_errors_render_themselves() -> None:
    from fourmica_x402 import MalformedPayment, Throttled, Unavailable

    status, headers, body = Throttled(retry_after=7).render()
    assert status == 429 and ("retry-after", "7") in headers
    assert json.loads(body) == {"error": "throttled", "message": "throttled"}
    assert MalformedPayment("bad").render()[0] == 402
    assert Unavailable().render()[0] == 503


def test_the_buyer_client_loads_requests_only_for_its_adapter() -> None:
    code = "import json, sys, fourmica_x402.client;print(json.dumps('requests' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout) is False
    code = (
        "import sys; sys.modules['requests'] = None\n"
        "try:\n"
        "    import fourmica_x402.client.requests_adapter\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "pip install 'fourmica-x402[requests]'" in out.stdout, out.stdout + out.stderr


def test_every_payment_config_option_is_documented() -> None:
    """A seller reads README.md and docs/ for what PaymentConfig takes: throttle_failures,
    throttle_window, tab_ttl_seconds and paywall were named nowhere, so the 429 `throttled`
    threshold could not be found, let alone changed."""
    root = Path(__file__).parents[2]
    text = " ".join(p.read_text() for p in [root / "README.md", *sorted(root.glob("docs/*.md"))])
    missing = [
        f.name
        for f in dataclasses.fields(fourmica_x402.PaymentConfig)
        if f"`{f.name}" not in text and f"{f.name}=" not in text
    ]
    assert missing == []
    # the buyer's SpendingPolicy too: its approval callback's keywords were named nowhere
    policy = inspect.signature(fourmica_x402.client.SpendingPolicy).parameters
    assert [n for n in policy if f"`{n}" not in text and f"{n}=" not in text] == []
