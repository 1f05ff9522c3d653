# A/B: HTTP order-query hits on one embedded worker with the gRPC listener off and on,
# alternated 3 times (decision 18). Needs wrk; writes under /tmp/ab.
B="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
mkdir -p /tmp/ab && cd /tmp/ab
set -e
export SURGE_DATA_DIR=/tmp/ab/data SURGE_DATABASE_URL=sqlite:////tmp/ab/data/s.db SURGE_RATE_LIMIT_READ=off SURGE_RATE_LIMIT_WRITE=off SURGE_MAX_CONNECTIONS_PER_CLIENT=10000 SURGE_INLINE_WORKER=off

$B/surge db seed --orders 1000 --users 10 --if-empty >/dev/null
TOKEN=$($B/surge token root --admin)
for round in 1 2 3; do
 for g in 0 18055; do
  SURGE_GRPC_PORT=$g SURGE_PORT=18080 SURGE_INTERNAL_PORT=18081 $B/surge serve > serve-$g.log 2>&1 &
  PID=$!
  sleep 2
  wrk -t1 -c64 -d3s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:18080/orders/1 >/dev/null
  R=$(wrk -t1 -c64 -d6s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:18080/orders/1 | grep Requests/sec | awk '{print $2}')
  echo "round $round grpc=$g $R"
  kill -TERM $PID; wait $PID || true
 done
done
