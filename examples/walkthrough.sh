#!/usr/bin/env bash
# Five minutes: sell and buy on one machine (README.md has the same commands).
#
# Run it from the repository root, after the README's setup command:
#
#     bash examples/walkthrough.sh
#
# It starts the example seller in the background, makes a throwaway test key, deposits the
# buyer's collateral into the seller's database, pays GET /premium once and shows the positions;
# the seller is stopped when the script ends. Each step is printed before it runs, exactly as
# the README writes it.
#
# Env: PORT (8000) and FOURMICA_X402_DB (sqlite:///fourmica_x402.db), for the seller and the
# buyer alike; FOURMICA_X402 and PYTHON, the programs run for .venv/bin/fourmica-x402 and
# .venv/bin/python. Everything listens and connects on 127.0.0.1 only.

set -euo pipefail

FOURMICA_X402=${FOURMICA_X402:-.venv/bin/fourmica-x402}
PYTHON=${PYTHON:-.venv/bin/python}
SELLER=
for program in "$FOURMICA_X402" "$PYTHON"; do  # run from elsewhere: say so, not "port taken"
    if ! command -v "$program" >/dev/null; then
        echo "walkthrough: $program not found: run it from the repository root after the" \
            "README's setup command (or set FOURMICA_X402 and PYTHON)" >&2
        exit 1
    fi
done

# Print a step as the README writes it, then run it (with $FOURMICA_X402 and $PYTHON standing
# for the .venv programs it names).
step() {
    local line cli='"$FOURMICA_X402"' python='"$PYTHON"'
    IFS= read -r line
    printf '\n$ %s\n' "$line"
    line=${line//".venv/bin/fourmica-x402"/$cli}
    eval "${line//".venv/bin/python"/$python}"
}

stop_seller() {
    if [[ -n $SELLER ]] && kill -0 "$SELLER" 2>/dev/null; then
        kill "$SELLER"
        for _ in $(seq 50); do  # up to 5 s, then it is killed
            kill -0 "$SELLER" 2>/dev/null || return 0
            sleep 0.1
        done
        kill -9 "$SELLER" 2>/dev/null || true
    fi
}
trap stop_seller EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Wait (30 s at most) until the seller answers GET /free: its database exists from then on.
wait_for_seller() {
    for _ in $(seq 150); do
        kill -0 "$SELLER" 2>/dev/null || { echo "the seller exited; see its output above" >&2; exit 1; }
        if "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
            "http://127.0.0.1:$PORT/free" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "the seller did not answer on 127.0.0.1:$PORT within 30 s" >&2
    exit 1
}

# 0. Where the seller listens and keeps its Core; the buyer's commands use the same database.
step <<'EOF'
export PORT=${PORT:-8000} FOURMICA_X402_DB=${FOURMICA_X402_DB:-sqlite:///fourmica_x402.db}
EOF

# Another server on that port would answer for the seller (which then fails to bind).
if ! "$PYTHON" -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' \
    "$PORT" 2>/dev/null; then
    echo "port $PORT is taken: run with PORT set to a free one" >&2
    exit 1
fi

# 1. The seller: GET /premium costs $0.01, settled on the embedded Core in FOURMICA_X402_DB.
step <<'EOF'
.venv/bin/python examples/starlette_seller.py &
EOF
SELLER=$!
wait_for_seller

# 2. A throwaway test key for the buyer, into FOURMICA_X402_KEY (its address is printed).
step <<'EOF'
eval "$(.venv/bin/fourmica-x402 key new)"
EOF

# 3. The buyer's collateral, deposited into the seller's database.
step <<'EOF'
.venv/bin/fourmica-x402 deposit --db "$FOURMICA_X402_DB" "$(.venv/bin/fourmica-x402 key address)" '$1'
EOF

# 4. One paid request, refused if the price is over $0.05.
step <<'EOF'
.venv/bin/fourmica-x402 pay "http://127.0.0.1:$PORT/premium" --max-price '$0.05'
EOF

# 5. The buyer's position: $1.00 of collateral, $0.01 locked until the cycle clears.
step <<'EOF'
.venv/bin/fourmica-x402 positions --db "$FOURMICA_X402_DB"
EOF
